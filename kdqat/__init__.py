"""kdqat: the shared core of kdqat-repro (quantizers, capture, KD losses, intervention, training).

Algorithms only: no CLI, no file-layout policy (those live in ``runners``).
"""
__version__ = "0.1.0"
