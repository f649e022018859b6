"""OPTQ / GPTQ (Frantar et al., ICLR 2023) as fake quantization (SPEC §7.8, §9 item 29).

Per linear layer with weight ``W`` ``[out, in]`` and calibration inputs ``x`` (rows ``[N, in]``):

1. Hessian of the layer-wise squared error ``‖WX − QX‖²``: ``H = (2/N)·Σ_tokens x xᵀ`` ``[in, in]``.
2. Dead inputs (``H_jj = 0``): ``H_jj ← 1`` and ``W[:, j] ← 0``. Dampening: ``H += λ·mean(diag H)·I``
   (``damp`` = λ = 0.01 by default; HF ``GPTQConfig`` uses 0.1).
3. ``U = chol(H⁻¹)ᵀ`` (upper Cholesky factor of the inverse Hessian).
4. Columns ``j = 0..in−1`` in order, in lazy blocks of ``block_size`` columns:
   ``q_j = grid(w_j)``; ``e = (w_j − q_j)/U_jj``; the not-yet-quantized columns of the block get
   ``w_k −= e·U_jk`` at once; the columns after the block get the accumulated update
   ``W[:, after] −= E·U[block, after]`` when the block ends (same result, fewer memory passes).
5. The grid (:func:`kdqat.ptq.grid_params`) is fixed per output row from the initial ``W`` when
   ``group_size = −1``; with groups it is computed when column ``j`` starts a group, from the
   *updated* weights of that group.

With a diagonal ``H`` every update is zero and the result equals round-to-nearest bit for bit.
``gptq_quantize_model`` runs the blocks in order; inside a block all linears see the block's
inputs with the previous blocks already quantized (``true_sequential=False``, the paper's
default) or, with ``true_sequential=True`` (HF ``GPTQConfig``'s default), each linear sees the
block with the linears before it already quantized.

P3's OPTQ row used HF ``GPTQConfig(bits=4, group_size=-1)`` (SPEC §7.8), whose defaults are
``sym=True, damp_percent=0.1, true_sequential=True, desc_act=False``: pass those to mimic it.
Activation reordering (``desc_act``) is not implemented.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from kdqat.ptq import (block_linears, check_group, for_each_block, get_weight, grid_params, n_inputs,
                       quantize_to_grid, relative_error, rtn, run_block, set_weight)


class HessianAccumulator:
    """Running ``H = (2/N)·Σ x xᵀ`` over token rows ``x`` ``[tokens, in]`` (fp32)."""

    def __init__(self, n_in: int, device=None):
        self.sum = torch.zeros(n_in, n_in, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        self.sum += x.t() @ x
        self.n += x.shape[0]

    def value(self) -> torch.Tensor:
        return 2.0 * self.sum / max(self.n, 1)


def gptq_quantize_weight(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int = -1, sym: bool = False,
                         damp: float = 0.01, block_size: int = 128) -> torch.Tensor:
    """GPTQ-quantized copy of ``w`` ``[out, in]`` given the Hessian ``h`` ``[in, in]`` (module docstring)."""
    W = w.float().clone()
    H = h.float().clone()
    n = W.shape[1]
    check_group(n, group_size)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * torch.diag(H).mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    if group_size <= 0:
        scale, zero = grid_params(W, bits, sym)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if group_size > 0 and (i1 + i) % group_size == 0:
                scale, zero = grid_params(torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group_size], bits, sym)
            col = W1[:, i]
            q = quantize_to_grid(col.unsqueeze(1), scale, zero, bits).squeeze(1)
            Q[:, i1 + i] = q
            err = (col - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q.to(w.dtype)


def gptq_quantize_model(model: nn.Module, calib_batches: Iterable, bits: int = 4, group_size: int = -1,
                        sym: bool = False, damp: float = 0.01, block_size: int = 128,
                        true_sequential: bool = False) -> dict:
    """GPTQ every linear of every decoder block in place; returns a report.

    ``calib_batches``: LongTensors ``[B, T]`` (or dicts with ``input_ids``), materialised once.
    Report: the settings and ``layers[name] = {"err", "err_rtn"}``, the relative calibration
    errors ``‖(W−Q)X‖²/‖WX‖²`` of GPTQ and of round-to-nearest on the same inputs.
    """
    report = {"method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "damp": damp,
              "block_size": block_size, "true_sequential": true_sequential, "layers": {}}

    def quantize_block(prefix, block, records, hidden):
        linears = block_linears(block)
        steps = [[n] for n in linears] if true_sequential else [list(linears)]
        for names in steps:
            acc = {n: HessianAccumulator(n_inputs(linears[n]), linears[n].weight.device) for n in names}
            run_block(block, records, hidden, {linears[n]: acc[n].add for n in names})
            for n in names:
                W, H = get_weight(linears[n]), acc[n].value()
                Q = gptq_quantize_weight(W, H, bits, group_size, sym, damp, block_size)
                set_weight(linears[n], Q)
                report["layers"][f"{prefix}.{n}"] = {
                    "err": relative_error(W, Q, H), "err_rtn": relative_error(W, rtn(W, bits, group_size, sym), H)}
        return run_block(block, records, hidden)

    for_each_block(model, list(calib_batches), quantize_block)
    return report
