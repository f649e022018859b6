"""Network → LUT conversion, LUT evaluation, power-of-two input scaling, cached tables (NNLUT.md §1.1, §1.2, §1.5).

A LUT with K entries holds K − 1 sorted breakpoints ``d`` [K−1] and a slope ``s`` [K] and an
intercept ``t`` [K] per segment; y = s_i·x + t_i for d_{i−1} ≤ x < d_i (segment 0 reaches to −∞,
segment K−1 to +∞: linear extrapolation outside the trained range).

Conversion (§1.2): unit j switches at d_j = −b_j/n_j; in segment k it is active when n_j > 0 and
the segment lies right of d_j, or n_j < 0 and it lies left of d_j. So with the breakpoints sorted
and grouped (g = 0..G−1), s_k = Σ_{n_j>0, g_j<k} m_j·n_j + Σ_{n_j<0, g_j≥k} m_j·n_j, and t_k the
same sums of m_j·b_j: a prefix sum over positive-slope units plus a suffix sum over
negative-slope units. Units with |n_j| ≤ ``zero_tol`` (default: exactly 0) are constants
m_j·ReLU(b_j) added to every intercept; units with m_j = 0 are dropped; breakpoints closer than
``merge_tol`` (default: exactly equal) are merged into their group's smallest. With both
tolerances 0 the LUT equals the network exactly up to float rounding (≤ 1e-12 in float64).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from kdqat.nnlut.network import OPS, FitConfig, OpSpec, ReluNet, fit_network

TABLE_DIR = Path(__file__).with_name("tables")


def network_to_lut(n: torch.Tensor, b: torch.Tensor, m: torch.Tensor, zero_tol: float = 0.0,
                   merge_tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact conversion of Σ m_j·ReLU(n_j·x + b_j) (n, b, m: [H]) into (d [G], s [G+1], t [G+1]), float64."""
    n, b, m = (v.detach().double().reshape(-1) for v in (n, b, m))
    const = n.abs() <= zero_tol
    c0 = (m[const] * b[const].clamp(min=0)).sum()
    keep = ~const & (m != 0)
    n, b, m = n[keep], b[keep], m[keep]
    d = -b / n
    order = torch.argsort(d, stable=True)
    n, b, m, d = n[order], b[order], m[order], d[order]
    new_group = torch.ones_like(d, dtype=torch.bool)
    new_group[1:] = (d[1:] - d[:-1]) > merge_tol
    g = torch.cumsum(new_group.long(), 0) - 1                        # group id per unit [H']
    groups = int(g[-1]) + 1 if g.numel() else 0
    bps = d[new_group]                                               # [G]

    def by_group(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros(groups, dtype=torch.float64).index_add_(0, g, v * mask)

    pos, neg = n > 0, n < 0
    z = torch.zeros(1, dtype=torch.float64)
    out = []
    for v in (m * n, m * b):
        p = torch.cat([z, torch.cumsum(by_group(v, pos), 0)])        # Σ over g_j < k, k = 0..G
        q = by_group(v, neg).flip(0).cumsum(0).flip(0)               # Σ over g_j ≥ k, k = 0..G−1
        out.append(p + torch.cat([q, z]))
    return bps, out[0], out[1] + c0


def lut_eval(x: torch.Tensor, d: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """y = s[i]·x + t[i], i = #{breakpoints ≤ x} (``torch.bucketize(right=True)``); x [...] → [...].

    Computed in x's dtype and on x's device (d, s, t are cast/moved). Differentiable w.r.t. x, s
    and t (not d).
    """
    kw = {"dtype": x.dtype, "device": x.device}
    i = torch.bucketize(x.detach(), d.to(**kw), right=True)
    return s.to(**kw)[i] * x + t.to(**kw)[i]


def pow2_reduce(x: torch.Tensor, log2_step: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(x·2^(step·k), k) with the integer k that brings x > 0 into [1, 2^step) (NNLUT.md §1.5).

    The paper scales only 0 < x < 1, once, by S = 2^10; we apply the same exact identity for any
    k ∈ ℤ (repeated scaling, and scaling down x ≥ 2^step), our extension. k = 0 inside the range.
    """
    _, e = torch.frexp(x.detach())                                   # x = mant·2^e, mant ∈ [0.5, 1)
    k = -torch.div(e - 1, log2_step, rounding_mode="floor")
    return torch.ldexp(x, (log2_step * k).to(x.dtype)), k


class Lut(nn.Module):
    """A PWL table as a module: buffers ``d`` [K−1], ``s`` [K], ``t`` [K] (float64).

    With ``scale_log2`` (S = 2^scale_log2) and ``power`` (f(x) = x^power) set, the lookup uses the
    exact power-of-two input scaling f(x) = 2^(−log2S·k·power)·LUT(x·S^k), k from ``pow2_reduce``
    (§1.5; log2S·power must be an integer so that both scalings are shifts); else a plain lookup.
    """

    def __init__(self, d: torch.Tensor, s: torch.Tensor, t: torch.Tensor, power: float | None = None,
                 scale_log2: int | None = None, name: str = "", net_state: dict | None = None):
        super().__init__()
        # non-persistent: a swapped model's state_dict stays that of the original model
        for k, v in (("d", d), ("s", s), ("t", t)):
            self.register_buffer(k, v.detach().double().clone(), persistent=False)
        if scale_log2 is not None and (power is None or float(scale_log2 * power) != int(scale_log2 * power)):
            raise ValueError(f"scaling by 2^{scale_log2} needs an integer log2 output factor (power={power})")
        self.power, self.scale_log2, self.name = power, scale_log2, name
        self.net_state = net_state           # the ReluNet the table came from (for calibration)

    @property
    def entries(self) -> int:
        return self.s.numel()

    @classmethod
    def from_network(cls, net: ReluNet, power: float | None = None, scale_log2: int | None = None,
                     name: str = "", **tol) -> "Lut":
        return cls(*network_to_lut(net.n, net.b, net.m, **tol), power=power, scale_log2=scale_log2, name=name,
                   net_state=net.state())

    def reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the table's actual input, k): x·S^k and k when scaling is on, else (x, None)."""
        if self.scale_log2 is None:
            return x, None
        return pow2_reduce(x, self.scale_log2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr, k = self.reduce(x)
        y = lut_eval(xr, self.d, self.s, self.t)
        if k is None:
            return y
        return torch.ldexp(y, (-self.scale_log2 * self.power * k).to(x.dtype))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, entries={self.entries}, power={self.power}, scale_log2={self.scale_log2}"


# ------------------------------------------------------------------------------------------------
# Cached tables: kdqat/nnlut/tables/{op}_{entries}_{init}.json (network + LUT + fit recipe)
# ------------------------------------------------------------------------------------------------

def dense_grid(op: OpSpec, points: int = 100_001) -> torch.Tensor:
    """Uniform grid over [lo, hi] (float64), plus a log-spaced grid of the same size for log ops."""
    g = torch.linspace(op.lo, op.hi, points, dtype=torch.float64)
    if op.log_grid:
        g = torch.cat([g, torch.logspace(math.log10(op.lo), math.log10(op.hi), points, dtype=torch.float64)])
    return g


def max_abs_error(fn, op: OpSpec) -> float:
    x = dense_grid(op)
    with torch.no_grad():
        return float((fn(x) - op.fn(x)).abs().max())


def build_table(op: str, entries: int, init: str, seeds: tuple[int, ...] = (0, 1, 2), steps: int = 6000) -> dict:
    """Fit ``op`` once per seed and keep the network with the smallest max |error| on ``dense_grid``.

    Both inits train with the paper's recipe (``FitConfig`` defaults); "spread" trains in relative
    coordinates (``FitConfig.relative``): from its least-squares start, raw Adam steps of 1e-3
    wreck the fit on wide ranges. Returns the JSON-able record."""
    spec = OPS[op]
    best = None
    for seed in seeds:
        cfg = FitConfig(entries=entries, init=init, seed=seed, steps=steps, relative=init == "spread")
        net = fit_network(spec, cfg)
        err = max_abs_error(net, spec)
        if best is None or err < best[0]:
            best = (err, net, cfg)
    err, net, cfg = best
    d, s, t = network_to_lut(net.n, net.b, net.m)
    return {"op": op, "entries": entries, "init": init, "range": [spec.lo, spec.hi], "max_abs_err": err,
            "seeds_tried": list(seeds), "config": cfg.to_dict(), "network": net.state(),
            "lut": {"d": d.tolist(), "s": s.tolist(), "t": t.tolist()}}


def table_path(op: str, entries: int, init: str) -> Path:
    return TABLE_DIR / f"{op}_{entries}_{init}.json"


def build_all_tables(ops=tuple(OPS), entries=(16, 32), inits=("paper", "spread")) -> list[Path]:
    """Regenerate every cached table (a few minutes on one core); paper init: best of 3 seeds."""
    TABLE_DIR.mkdir(exist_ok=True)
    paths = []
    for op in ops:
        for e in entries:
            for init in inits:
                rec = build_table(op, e, init, seeds=(0, 1, 2) if init == "paper" else (0,))
                path = table_path(op, e, init)
                path.write_text(json.dumps(rec, indent=1) + "\n")
                paths.append(path)
    return paths


def load_record(op: str, entries: int = 16, init: str = "best") -> dict:
    """The cached JSON record; ``init="best"``: whichever init has the smaller stored max error."""
    if init == "best":
        recs = [load_record(op, entries, i) for i in ("paper", "spread") if table_path(op, entries, i).exists()]
        if not recs:
            raise FileNotFoundError(f"no cached table for {op!r} with {entries} entries; run python -m kdqat.nnlut.lut")
        return min(recs, key=lambda r: r["max_abs_err"])
    return json.loads(table_path(op, entries, init).read_text())


def load_network(op: str, entries: int = 16, init: str = "best") -> ReluNet:
    return ReluNet.from_state(load_record(op, entries, init)["network"])


def load_table(op: str, entries: int = 16, init: str = "best", scaled: bool = True) -> Lut:
    """Cached LUT for ``op``, with the op's power-of-two input scaling (``OpSpec.scale_log2``)
    unless ``scaled=False`` (plain lookup, e.g. to compare the raw table with its network)."""
    rec = load_record(op, entries, init)
    spec = OPS[op]
    lut = {k: torch.tensor(v, dtype=torch.float64) for k, v in rec["lut"].items()}
    on = scaled and spec.scale_log2 is not None
    return Lut(lut["d"], lut["s"], lut["t"], power=spec.power if on else None,
               scale_log2=spec.scale_log2 if on else None, name=f"{op}_{rec['entries']}_{rec['init']}",
               net_state=rec["network"])


if __name__ == "__main__":
    for p in build_all_tables():
        print(p)
