"""Block perplexity of a causal LM as the HF Trainer reports it for TSLD (SPEC §7.4, §9 item 25).

``blocks``: LongTensor ``[n, T]`` of non-overlapping token blocks (``labels = input_ids``; no
stride, no sliding window: the first token of every block has no context and is never a target).
Per eval batch ``b`` of ``B_b`` blocks the model's own HF loss is

    ℓ_b = mean over the B_b·(T−1) shifted positions of −log p(x_{t+1} | x_{≤t})

and the HF Trainer's ``eval_loss`` is the mean of ``ℓ_b`` repeated ``B_b`` times (each batch
weighted by its number of blocks, so a short last batch does not count as a full one):

    loss = Σ_b B_b·ℓ_b / Σ_b B_b,       ppl = exp(loss).

With equal-length blocks this is the mean token cross-entropy over the whole split.
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def block_perplexity(model, blocks: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """``{"ppl", "loss"}`` of ``model`` on ``blocks`` ``[n, T]`` (module docstring, SPEC §7.4).

    Runs in eval mode (the previous train/eval mode is restored) under ``no_grad``; the loss is
    the model's own shifted CE (HF upcasts logits to fp32). ``n`` must be ≥ 1 and ``T`` ≥ 2.
    """
    if blocks.dim() != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be [n>=1, T>=2], got {tuple(blocks.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for start in range(0, blocks.shape[0], batch_size):
            x = blocks[start:start + batch_size].to(device)
            out = model(input_ids=x, labels=x, use_cache=False)
            total += float(out.loss) * x.shape[0]
            count += x.shape[0]
    finally:
        model.train(was_training)
    loss = total / count
    return {"ppl": math.exp(loss), "loss": loss}
