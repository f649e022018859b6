"""Data: the task registry (:mod:`kdqat.data.tasks`) and loaders per task kind.

Kept import-light: submodules import ``datasets``/``tokenizers`` only when used. Loaders:
:mod:`kdqat.data.encoder` (GLUE/KLUE/NSMC), :mod:`kdqat.data.offline` (rt_polarity, lm_text),
:mod:`kdqat.data.ptb` (PTB blocks).
"""
from __future__ import annotations


class DataUnavailable(RuntimeError):
    """A dataset cannot be loaded here (hub unreachable / offline mode / not cached).

    The message names the dataset and how to make it available (DESIGN.md principle 5).
    """


__all__ = ["DataUnavailable"]
