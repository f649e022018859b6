"""The one deterministic training loop: teacher fine-tune, QAT-KD, and the TI two-step plan.

SPEC §6.1 (BertAdam, warm-up 10 %, t_total = ceil(#train/bs)·epochs), §6.4 (periodic dev
evaluation, best-dev selection, the off-by-one evaluation at t_total−1), §5.3 (two phases with a
fresh optimizer), §7.2/§7.4 (decoders: AdamW, linear decay, evaluation before training and every
epoch, best epoch kept).

The loop knows nothing about models or losses: it is given a ``loss_fn(batch, phase, step) ->
(loss, {term: value})`` and an ``eval_fn() -> {"selection": x, "report": y, ...}``. Data is a dict
of tensors with a common first dimension; the order of each epoch comes from
``seed.epoch_permutation`` so a resumed job replays exactly the same batches.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from kdqat import checkpoint, optim
from kdqat.seed import epoch_permutation, rng_state, set_rng_state


@dataclass
class Phase:
    """A stretch of training with its own optimizer. ``steps``: optimizer steps in the phase;
    ``t_total``: the schedule length (may exceed ``steps``); ``evaluate``: dev evaluation on/off."""
    name: str
    steps: int
    t_total: int
    evaluate: bool = True


@dataclass
class LoopConfig:
    lr: float
    batch_size: int
    optimizer: str = "bertadam"          # "bertadam" | "adamw"
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0           # bertadam: per tensor; adamw: global norm
    eval_every: int = 50                 # steps; decoders use steps-per-epoch
    eval_at_start: bool = False          # decoders evaluate before training (SPEC §7.4)
    eval_at: str = "t_total-1"           # SPEC §6.4 off-by-one; "end" evaluates after the last step
    higher_is_better: bool = True
    keep_best_weights: bool = False      # decoder FP fine-tune keeps the best epoch (SPEC §7.1)
    checkpoint_every: int = 0            # 0: never
    seed: int = 42
    phases: list[Phase] = field(default_factory=list)


def steps_per_epoch(n: int, batch_size: int, rule: str = "ceil") -> int:
    """SPEC §6.1: P1/P2 ceil(#train/bs); TernaryBERT floor."""
    return math.ceil(n / batch_size) if rule == "ceil" else n // batch_size


def _batch(data: dict, order: torch.Tensor, i: int, bs: int) -> dict:
    idx = order[i * bs:(i + 1) * bs]
    return {k: v[idx.to(v.device)] for k, v in data.items()}


def train(model: torch.nn.Module, data: dict, cfg: LoopConfig, loss_fn: Callable, eval_fn: Callable,
          ckpt_path=None, on_log: Callable | None = None, on_phase: Callable | None = None) -> dict:
    """Run every phase of ``cfg.phases`` and return the result dict.

    Returns {"best": metrics at the best evaluation, "last": metrics at the last evaluation,
    "curves": {"train_loss": [(step, v)], "eval": [(step, metrics)]}, "steps": n, "wall_s": t,
    "resumed_from": step or None}. A checkpoint (if ``ckpt_path``) is written every
    ``cfg.checkpoint_every`` global steps (not after the last step: the caller writes the result);
    an existing one is resumed from, bitwise like an uninterrupted run. It records the index of the
    phase whose optimizer it holds: a checkpoint taken at the end of a phase restores weights, RNG
    and curves but the next phase starts with a fresh optimizer, as it would have (SPEC §5.3).
    """
    n = next(iter(data.values())).shape[0]
    spe = steps_per_epoch(n, cfg.batch_size)
    total = sum(p.steps for p in cfg.phases)
    st = {"step": 0, "best": None, "last": None, "curves": {"train_loss": [], "eval": []},
          "best_state": None, "wall_s": 0.0}
    saved = checkpoint.load(ckpt_path) if ckpt_path else None
    resumed_from = None
    opt = sched = None
    t0 = time.perf_counter()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            m = eval_fn()
        model.train()
        st["last"] = {"step": step, **m}
        st["curves"]["eval"].append((step, m))
        better = (st["best"] is None or (m["selection"] > st["best"]["selection"] if cfg.higher_is_better
                                         else m["selection"] < st["best"]["selection"]))
        if better:
            st["best"] = {"step": step, **m}
            if cfg.keep_best_weights:
                st["best_state"] = copy.deepcopy(checkpoint.model_state(model))
        if on_log:
            on_log("eval", step, m)

    start_global = 0
    for pi, phase in enumerate(cfg.phases):
        end_global = start_global + phase.steps
        if saved is not None and saved["step"] >= end_global:
            start_global = end_global
            continue
        opt, sched = optim.build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, phase.t_total,
                                           cfg.warmup, cfg.max_grad_norm)
        if on_phase:
            on_phase(phase.name)
        fresh = True
        if saved is not None:  # resume inside this phase, or at its start (saved at the previous one's end)
            checkpoint.load_model_state(model, saved["model"])
            set_rng_state(saved["rng"])
            for k in ("step", "best", "last", "curves", "best_state", "wall_s"):
                st[k] = saved[k]
            if saved.get("phase", pi) == pi:  # one saved at a phase boundary holds the OLD optimizer
                checkpoint.load_optim_state(model, opt, saved["optimizer"])
                sched.load_state_dict(saved["scheduler"])
                fresh = False
            resumed_from, saved = st["step"], None
        if fresh and phase.evaluate and cfg.eval_at_start and st["step"] == start_global:
            evaluate(st["step"])
        model.train()
        order, order_epoch = None, -1
        while st["step"] < end_global:
            local = st["step"] - start_global
            epoch, i = divmod(local, spe)
            if epoch != order_epoch:
                order, order_epoch = epoch_permutation(n, cfg.seed + 7919 * pi, epoch), epoch
            batch = _batch(data, order, i, cfg.batch_size)
            loss, terms = loss_fn(batch, phase.name, local)
            loss.backward()
            if cfg.optimizer == "adamw" and cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            st["step"] += 1
            local += 1
            st["curves"]["train_loss"].append((st["step"], float(loss.detach())))
            if on_log:
                on_log("train", st["step"], {"loss": float(loss.detach()), **terms})
            if phase.evaluate:
                due = local % cfg.eval_every == 0
                last = (local == phase.t_total - 1) if cfg.eval_at == "t_total-1" else (local == phase.steps)
                if due or last:
                    evaluate(st["step"])
            if ckpt_path and cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0 \
                    and st["step"] < total:
                st["wall_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint.save(ckpt_path, {**st, "phase": pi, "model": checkpoint.model_state(model),
                                            "optimizer": checkpoint.optim_state(model, opt),
                                            "scheduler": sched.state_dict(), "rng": rng_state()})
        start_global = end_global
    if st["last"] is None:
        evaluate(st["step"])  # a run too short for any periodic evaluation still gets one
    if cfg.keep_best_weights and st["best_state"] is not None:
        checkpoint.load_model_state(model, st["best_state"])
    st["wall_s"] += time.perf_counter() - t0
    return {"best": st["best"], "last": st["last"], "curves": st["curves"], "steps": st["step"],
            "wall_s": st["wall_s"], "resumed_from": resumed_from}
