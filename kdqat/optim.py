"""Optimizers and schedules of the papers (SPEC §6.1, §7.2).

``BertAdam`` is written here because torch's Adam/AdamW cannot express its semantics (no bias
correction, per-tensor gradient clipping before the moments, decoupled weight decay added to the
Adam update). Everything else uses torch: AdamW and ``LambdaLR``.
"""
from __future__ import annotations

import math

import torch


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction (TernaryBERT / P1 / P2 ``BertAdam``, SPEC §6.1, §9.9).

    Per step, for each parameter p with gradient g:
      g ← g · min(1, max_grad_norm / (‖g‖₂ + 1e-6))      (each tensor clipped on its own)
      m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
      u = m / (√v + ε) + wd·p ;  p ← p − lr·u             (lr already scheduled by the caller)
    """

    def __init__(self, params, lr=2e-5, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_grad_norm=1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            b1, b2 = group["betas"]
            if group["max_grad_norm"] > 0:
                norms = torch.stack(torch._foreach_norm(grads))          # [n_params]: one kernel per
                coefs = torch.clamp(group["max_grad_norm"] / (norms + 1e-6), max=1.0)  # op, not per tensor
                torch._foreach_mul_(grads, list(coefs.unbind()))
            ms, vs = [], []
            for p in params:
                st = self.state[p]
                if not st:
                    st["next_m"] = torch.zeros_like(p)
                    st["next_v"] = torch.zeros_like(p)
                ms.append(st["next_m"])
                vs.append(st["next_v"])
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, grads, alpha=1 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
            upd = torch._foreach_sqrt(vs)
            torch._foreach_add_(upd, group["eps"])
            if params[0].is_cuda:      # m / (√v + ε): one launch per op on a GPU (launch-bound there)
                upd = torch._foreach_div(ms, upd)
            else:                      # into the √v buffer: bitwise _foreach_div(ms, upd), without a second
                for m, u in zip(ms, upd):  # parameter-sized allocation (~30 % of the CPU step)
                    torch.div(m, u, out=u)
            if group["weight_decay"] > 0:
                torch._foreach_add_(upd, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, upd, alpha=-group["lr"])


def warmup_linear(warmup: float, t_total: int):
    """TernaryBERT ``warmup_linear``: p/warmup for p < warmup, else max((p−1)/(warmup−1), 0); p = step/t_total."""
    def f(step: int) -> float:
        p = step / max(t_total, 1)
        if p < warmup:
            return p / warmup
        return max((p - 1.0) / (warmup - 1.0), 0.0)
    return f


def linear_decay(t_total: int, n_warmup: int = 0):
    """HF ``get_linear_schedule_with_warmup`` (n_warmup=0: the HF Trainer default, SPEC §7.2)."""
    def f(step: int) -> float:
        if step < n_warmup:
            return step / n_warmup
        return max(0.0, (t_total - step) / max(1, t_total - n_warmup))
    return f


def no_decay(name: str) -> bool:
    """Parameters without weight decay (SPEC §6.1): biases and LayerNorm weights."""
    return "bias" in name or "LayerNorm" in name or "layer_norm" in name or "norm.weight" in name


def build_optimizer(model: torch.nn.Module, kind: str, lr: float, weight_decay: float, t_total: int,
                    warmup: float = 0.0, max_grad_norm: float = 1.0):
    """(optimizer, LambdaLR scheduler) for the trainable parameters of ``model``.

    kind: "bertadam" (SPEC §6.1, warmup_linear) or "adamw" (torch AdamW ε=1e-8, linear decay after a
    linear warm-up of ``warmup``·t_total steps; global-norm clipping is done by the training loop).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
    if kind == "bertadam":
        opt = BertAdam(groups, lr=lr, max_grad_norm=max_grad_norm)
        sched = warmup_linear(warmup, t_total)
    elif kind == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
        sched = linear_decay(t_total, math.floor(warmup * t_total))
    else:
        raise ValueError(f"unknown optimizer {kind!r}; valid: bertadam, adamw")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, sched)
