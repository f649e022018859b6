"""Local ``evaluate`` metric modules (the hub scripts are unreachable offline; ASSETS.md).

Each ``<name>/<name>.py`` holds one ``evaluate.Metric`` subclass wrapping the sklearn/scipy call
the hub metric of the same name uses. Load with :func:`metric_path` + ``evaluate.load``; the files
keep one import per line because ``evaluate`` parses imports with a regex.
"""
from __future__ import annotations

from pathlib import Path

METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr")


def metric_path(name: str) -> str:
    """Absolute path of the local metric module ``name`` (a folder holding ``name.py``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown local metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    return str(Path(__file__).resolve().parent / name)
