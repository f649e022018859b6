"""Atomic training checkpoints (DESIGN.md principle 4).

A checkpoint holds everything a resumed job needs to continue bitwise like an uninterrupted one:
student weights, optimizer and scheduler state, every RNG state, the step, the training phase,
the best-so-far evaluation (and its weights when the protocol keeps the best model), and the
curves. It is written to a temporary file in the same folder and moved into place with
``os.replace``, so a kill mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save(path: str | Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
