"""Determinism lives here, and only here (DESIGN.md principle 4).

``seed_everything`` seeds python, numpy and torch and switches torch to deterministic kernels;
``rng_state``/``set_rng_state`` capture and restore every generator so that a resumed job continues
the exact random stream (dropout masks) of an uninterrupted one.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed random, numpy, torch (CPU and CUDA) and request deterministic algorithms (SPEC §6.1)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every RNG state, as a picklable dict."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch: a permutation drawn from its own generator, so that resuming
    mid-epoch needs no sampler state (same order, skip the finished batches)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g)
