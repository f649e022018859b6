"""Runners: the registry (``runners.registry``: TOML tables -> cells -> jobs), the job runner
(``python -m runners.run``), executors and the report (``python -m runners.report``).

Dependencies point one way: ``runners`` -> ``kdqat``. Importing this package imports nothing heavy;
the registry loads without torch until it validates methods and quantization presets.
"""
