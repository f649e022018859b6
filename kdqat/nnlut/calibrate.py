"""Post-replacement calibration of swapped NN-LUTs with the model frozen (NNLUT.md §1.6).

Target (a) of §1.6 (local): every deployed table is refitted against its own exact scalar
function on the inputs that table actually sees in the model; Transformer weights are not
touched (everything runs under ``torch.no_grad``). Procedure:

1. run the swapped model on ``batches`` (the paper: an unlabelled tenth of the task's training
   data) through ``run(batch)`` and record each table's inputs: a GELU module's input x, a
   LayerNorm module's σ² + ε, the softmax's clamped x − max (exp) and row sums (1/x). From each
   call ``per_call`` elements are kept, drawn uniformly without replacement (seeded), and moved
   to the CPU (the refit below runs there, whatever the model's device).
   Softmax inputs are only seen when ``run`` passes ``handle.softmax_fn`` to
   ``kdqat.capture.Capture``; the softmax tables are shared by all layers (Capture calls
   ``softmax_fn(scores)`` without a layer index), GELU/LayerNorm tables are per module.
2. scaled tables (``Lut.scale_log2`` set) are trained on the reduced inputs x·S^k they see;
3. the table's source network (``Lut.net_state``) is trained by ``train_network`` (L1, Adam,
   lr ``lr`` (our choice 1e-4: the paper gives none), decay ×0.1 at 50 %/75 %) for ``epochs``
   passes over the recorded samples in minibatches of ``batch``, then converted back to a LUT
   that replaces the module's table.

Returns {site: {"samples", "l1_before", "l1_after", "max_before", "max_after"}} where the errors
are mean / max |LUT(x) − f(x)| over that site's recorded samples.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from kdqat.nnlut.lut import Lut
from kdqat.nnlut.network import FitConfig, ReluNet, train_network
from kdqat.nnlut.ops import LutGELU, LutLayerNorm, LutSwap

FUNCS = {"gelu": F.gelu, "rsqrt": torch.rsqrt, "exp": torch.exp, "recip": torch.reciprocal}


def _sites(handle: LutSwap) -> dict[str, tuple[object, str, str]]:
    """{site: (owner, attribute holding the Lut, function key)}."""
    sites = {}
    for name, mod in handle.swapped.items():
        if isinstance(mod, LutGELU):
            sites[name] = (mod, "lut", "gelu")
        elif isinstance(mod, LutLayerNorm):
            sites[name] = (mod, "rsqrt", "rsqrt")
    if handle.softmax_fn is not None:
        sites["softmax.exp"] = (handle.softmax_fn, "exp", "exp")
        sites["softmax.recip"] = (handle.softmax_fn, "recip", "recip")
    return sites


def collect_inputs(handle: LutSwap, batches: Iterable, run: Callable, per_call: int = 4096,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Recorded inputs per site, float64 [N] (step 1 of the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    store: dict[str, list[torch.Tensor]] = {}

    def keep(site: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1)
        if x.numel() > per_call:
            x = x[torch.randperm(x.numel(), generator=gen)[:per_call].to(x.device)]
        store.setdefault(site, []).append(x.double().cpu())

    hooks = []
    for name, mod in handle.swapped.items():
        if isinstance(mod, LutGELU):
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: keep(n, a[0])))
        elif isinstance(mod, LutLayerNorm):
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: keep(n, m.variance_input(a[0]))))
    sm = handle.softmax_fn
    if sm is not None:
        sm.record = []
    try:
        with torch.no_grad():
            for batch in batches:
                run(batch)
                for x, total in (sm.record if sm is not None else []):
                    keep("softmax.exp", x), keep("softmax.recip", total)
                if sm is not None:
                    sm.record = []
    finally:
        for h in hooks:
            h.remove()
        if sm is not None:
            sm.record = None
    return {k: torch.cat(v) for k, v in store.items()}


def _errors(lut: Lut, x: torch.Tensor, fn) -> tuple[float, float]:
    with torch.no_grad():
        e = (lut(x) - fn(x)).abs()
    return float(e.mean()), float(e.max())


def calibrate(handle: LutSwap, batches: Iterable, run: Callable | None = None, epochs: int = 5,
              lr: float = 1e-4, batch: int = 2048, per_call: int = 4096, seed: int = 0,
              min_steps: int = 100) -> dict[str, dict]:
    """Refit every table of ``handle`` on its recorded inputs (module docstring); in place.

    ``run(batch)`` runs the swapped model (default ``handle.model(**batch)``).
    """
    if run is None:
        run = lambda b: handle.model(**b)  # noqa: E731
    inputs = collect_inputs(handle, batches, run, per_call, seed)
    report = {}
    gen = torch.Generator().manual_seed(seed)
    for site, (owner, attr, key) in _sites(handle).items():
        if site not in inputs:
            continue
        lut: Lut = getattr(owner, attr)
        if lut.net_state is None:
            raise ValueError(f"calibrate: table at {site!r} has no source network (build it with Lut.from_network)")
        x, fn = inputs[site], FUNCS[key]
        before = _errors(lut, x, fn)
        xr = lut.reduce(x)[0]
        net = ReluNet.from_state(lut.net_state)
        steps = max(min_steps, epochs * math.ceil(xr.numel() / batch))
        cfg = FitConfig(entries=net.hidden + 1, batch=batch, steps=steps, lr=lr, relative=True)
        train_network(net, xr, fn(xr), cfg, gen)
        new = Lut.from_network(net, power=lut.power, scale_log2=lut.scale_log2, name=f"{lut.name}+cal")
        new = new.to(lut.d.device)
        setattr(owner, attr, new)
        after = _errors(new, x, fn)
        report[site] = {"samples": x.numel(), "l1_before": before[0], "l1_after": after[0],
                        "max_before": before[1], "max_after": after[1]}
    return report
