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


# -- full (unsharded) state of a model that may be FSDP-sharded (kdqat.distributed, plan "fsdp") --
# A sharded model's parameters are DTensors; its state is read and written as FULL tensors on
# every rank through torch.distributed.checkpoint's state-dict API (collective calls: every rank
# calls them at the same point), so a checkpoint or a saved model is the same file whatever the
# world size. An unsharded model goes through its own state_dict / load_state_dict unchanged.

def sharded(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are DTensors (FSDP2 ``fully_shard``)."""
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in model.parameters())


def _full():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True)


def model_state(model: torch.nn.Module) -> dict:
    """``model.state_dict()``, or the full state dict of a sharded model (gathered on every rank)."""
    if not sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(model, options=_full())
    tied: dict[int, list[str]] = {}     # tied parameters (e.g. lm_head = word embeddings) come back as
    for name, p in model.named_parameters(remove_duplicate=False):     # copies: make them one tensor
        tied.setdefault(id(p), []).append(name)                         # again, as state_dict() has it
    for names in tied.values():
        for name in names[1:]:
            if names[0] in state and name in state:
                state[name] = state[names[0]]
    return state


def load_model_state(model: torch.nn.Module, state: dict) -> None:
    if not sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, state, options=_full())


def optim_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    if not sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, opt, options=_full())


def load_optim_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    if not sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, state, options=_full())


def save_pretrained(model, path: str | Path) -> None:
    """HF ``save_pretrained`` of the full weights (a sharded model's are gathered first)."""
    if sharded(model):
        model.save_pretrained(path, state_dict=model_state(model))
    else:
        model.save_pretrained(path)
