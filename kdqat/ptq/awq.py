"""AWQ, activation-aware weight quantization (Lin et al., MLSys 2024), as fake quantization (SPEC §7.8).

Per linear layer with weight ``W`` ``[out, in]`` and calibration inputs ``X`` ``[N, in]``:

* per-input-channel activation magnitude ``s_X = mean_tokens |x|`` ``[in]``;
* for ``α`` on a grid over [0, 1] (``α_i = i/n_grid``, i = 0..n_grid):
  ``s = s_X^α`` (``s_X`` clamped at 1e-5), normalised by ``sqrt(max s · min s)``;
  ``L(α) = mean((X·diag(s)⁻¹)·Q(W·diag(s))ᵀ − X·Wᵀ)²`` with ``Q`` = round-to-nearest
  (:func:`kdqat.ptq.rtn`, per output row or group);
* the ``α`` with the smallest loss wins (ties → the smaller α, so never worse than α = 0 = RTN).

The input scale ``1/s`` is kept exactly, folded into the de-quantized weight's columns:
``W_eff = Q(W·diag(s))·diag(s)⁻¹`` — the same layer function as folding ``1/s`` into the
preceding operator, up to float rounding, and it leaves the model a plain HF model. (The rows of
``W_eff·diag(s)`` are on the ≤ 2^bits-level grid.) With α = 0, ``s ≡ 1`` and ``W_eff`` equals
round-to-nearest bit for bit.

``awq_quantize_model`` searches every block linear on the inputs of the full-precision model
(each block's outputs, computed before it is quantized, feed the next block, as in the
reference implementation). The weight-clipping search of the reference code is not implemented.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kdqat.ptq import block_linears, check_group, for_each_block, get_weight, rtn, run_block, set_weight


def awq_quantize_weight(w: torch.Tensor, x: torch.Tensor, bits: int = 4, group_size: int = -1, sym: bool = False,
                        n_grid: int = 20, alphas: list[float] | None = None) -> tuple[torch.Tensor, dict]:
    """``(W_eff, info)`` for ``w`` ``[out, in]`` and inputs ``x`` ``[N, in]`` (module docstring).

    ``info``: ``alpha``, ``scale`` ``[in]``, ``q_scaled`` = Q(W·diag(s)) ``[out, in]`` (on the grid),
    ``loss`` (at the chosen α), ``loss_rtn`` (α = 0), ``err`` / ``err_rtn`` (the same as
    ``‖ΔY‖²/‖Y‖²``), ``losses`` (per α).
    """
    check_group(w.shape[1], group_size)
    W, X = w.float(), x.float()
    Y = X @ W.t()
    s_x = X.abs().mean(dim=0).clamp(min=1e-5)
    grid = alphas if alphas is not None else [i / n_grid for i in range(n_grid + 1)]
    losses, best = [], None
    for a in grid:
        s = s_x.pow(a)
        s = s / (s.max() * s.min()).sqrt()
        q = rtn(W * s, bits, group_size, sym)
        loss = float(((X / s) @ q.t() - Y).pow(2).mean())
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, a, s, q)
    loss, a, s, q = best
    loss_rtn = float((X @ rtn(W, bits, group_size, sym).t() - Y).pow(2).mean())
    y2 = float(Y.pow(2).mean()) or 1.0
    info = {"alpha": a, "scale": s, "q_scaled": q, "loss": loss, "loss_rtn": loss_rtn, "losses": losses,
            "err": loss / y2, "err_rtn": loss_rtn / y2}
    return (q / s).to(w.dtype), info


def awq_quantize_model(model: nn.Module, calib_batches: Iterable, bits: int = 4, group_size: int = -1,
                       sym: bool = False, n_grid: int = 20, max_tokens: int | None = None) -> dict:
    """AWQ every linear of every decoder block in place; returns a report.

    ``max_tokens``: keep at most this many calibration tokens per layer (the first ones) for the
    search (memory: ``X`` is held per layer); None keeps all. Report: the settings and
    ``layers[name] = {"alpha", "err", "err_rtn"}`` (relative calibration output errors).
    """
    report = {"method": "awq", "bits": bits, "group_size": group_size, "sym": sym, "n_grid": n_grid,
              "max_tokens": max_tokens, "layers": {}}

    def quantize_block(prefix, block, records, hidden):
        linears = block_linears(block)
        xs: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
        taps = {m: (lambda t, n=n: xs[n].append(t.clone())) for n, m in linears.items()}
        outs = run_block(block, records, hidden, taps)
        for n, m in linears.items():
            x = torch.cat(xs[n])[:max_tokens] if max_tokens else torch.cat(xs[n])
            w_eff, info = awq_quantize_weight(get_weight(m), x, bits, group_size, sym, n_grid)
            set_weight(m, w_eff)
            report["layers"][f"{prefix}.{n}"] = {k: info[k] for k in ("alpha", "err", "err_rtn")}
        return outs

    for_each_block(model, list(calib_batches), quantize_block)
    return report
