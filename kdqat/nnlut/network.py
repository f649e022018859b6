"""NN-LUT approximation network and its training (NNLUT.md §1.2, §1.4).

The network is scalar → scalar with one hidden layer of H = N − 1 ReLU units and no output
bias (paper Eq. 5)::

    net(x) = Σ_i m_i · ReLU(n_i · x + b_i)          x: any shape [...] → [...]

An N-entry LUT has N − 1 breakpoints d_i = −b_i / n_i and N segments (``kdqat.nnlut.lut``).

Training (NNLUT.md §1.4): ``samples`` inputs drawn uniformly from the op's range and labelled
with the exact function, L1 loss (mean over the batch), Adam (lr 1e-3) with a multi-step decay.
The paper leaves batch size, step count, milestones and the m-initialisation open; our choices
(``FitConfig`` defaults): batch 2048, 6000 steps (≈ 123 epochs of 100K samples), decay ×0.1 at
50 % and 75 % of the steps, m ~ U(−1/√H, 1/√H) (PyTorch's default for a Linear of fan-in H).

Two initialisations:

* ``"paper"``: sign-constrained random (NNLUT.md §1.4 table): GELU/SiLU n, b ~ N(0, 1);
  exp n, b ~ U(0.01, 1); 1/x and 1/√x n ~ U(−1, −0.01), b ~ U(0.01, 1).
* ``"spread"`` (ours, for ops where the paper's init collapses, e.g. 1/x): breakpoints at the
  quantiles of a knot density ∝ √|f''| (+ a 5 % uniform floor) over the range — the density that
  equalises the max error of a piecewise-linear interpolant — with |n| = 1 and the op's n sign
  (+1 for GELU/SiLU), b = −n·d, and m solved by least squares on ``knot_grid`` (equal weight
  per knot interval). It is then trained with the same recipe in relative coordinates
  (``FitConfig.relative``, see ``train_network``), as is calibration (``kdqat.nnlut.calibrate``).

A 16-entry fit (6000 steps, hand-written gradients) takes ~2 s on one idle CPU core.
Everything is float64 and deterministic given ``seed`` (one ``torch.Generator``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class OpSpec:
    """One scalar sub-function (NNLUT.md §1.3–§1.5): exact ``fn``, training range, init signs.

    ``n_sign``/``b_sign``: +1, −1, or 0 (random sign) for the ``"paper"`` init; ``log_grid``:
    evaluate on a log-spaced grid as well (1/x, 1/√x); ``power``: f(x) = x^power; ``scale_log2``:
    log2 of the factor S of the exact power-of-two input scaling (NNLUT.md §1.5) the table is
    deployed with (x is brought into [1, S) = [lo, hi)), None: plain lookup.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    lo: float
    hi: float
    n_sign: int
    b_sign: int
    log_grid: bool = False
    power: float | None = None
    scale_log2: int | None = None


def gelu_exact(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact erf, x·½·(1 + erf(x/√2)) (BERT's ``"gelu"``)."""
    return F.gelu(x)


OPS: dict[str, OpSpec] = {
    "gelu": OpSpec("gelu", gelu_exact, -5.0, 5.0, 0, 0),
    "exp": OpSpec("exp", torch.exp, -256.0, 0.0, 1, 1),
    # 1/x on the paper's range; scaling by 2^10 only acts for sums ≥ 1024 (our extension, §1.5)
    "recip": OpSpec("recip", torch.reciprocal, 1.0, 1024.0, -1, 1, log_grid=True, power=-1.0, scale_log2=10),
    # 1/√x on the paper's Table-1 range, no input scaling ...
    "rsqrt": OpSpec("rsqrt", torch.rsqrt, 0.1, 1024.0, -1, 1, log_grid=True, power=-0.5),
    # ... and on the stable range [1, 1024] with scaling by S = 2^10 (§1.5)
    "rsqrt_s": OpSpec("rsqrt_s", torch.rsqrt, 1.0, 1024.0, -1, 1, log_grid=True, power=-0.5, scale_log2=10),
    # Narrow variants (ours): one scaling step wide, so the exact scaling keeps the table's small
    # *relative* error everywhere (a table fitted in absolute error over [1, 1024] is off by tens
    # of percent near 1024, where 1/x and 1/√x are small).
    "recip_n": OpSpec("recip_n", torch.reciprocal, 1.0, 2.0, -1, 1, power=-1.0, scale_log2=1),
    "rsqrt_n": OpSpec("rsqrt_n", torch.rsqrt, 1.0, 4.0, -1, 1, power=-0.5, scale_log2=2),
    # SiLU (optional): range chosen by us so that both tails are nearly linear.
    "silu": OpSpec("silu", F.silu, -8.0, 8.0, 0, 0),
}


class ReluNet(nn.Module):
    """net(x) = Σ_i m_i·ReLU(n_i·x + b_i); parameters n, b, m of shape [H]; no output bias."""

    def __init__(self, hidden: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.n = nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.m = nn.Parameter(torch.zeros(hidden, dtype=dtype))

    @property
    def hidden(self) -> int:
        return self.n.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [...] → [...]; the hidden axis (size H) is summed out."""
        return (torch.relu(x.unsqueeze(-1) * self.n + self.b) * self.m).sum(-1)

    def state(self) -> dict[str, list[float]]:
        """Parameters as plain float lists (JSON-able, exact float64 round trip)."""
        return {k: getattr(self, k).detach().double().tolist() for k in ("n", "b", "m")}

    @classmethod
    def from_state(cls, state: dict[str, list[float]]) -> "ReluNet":
        net = cls(len(state["n"]))
        with torch.no_grad():
            for k in ("n", "b", "m"):
                getattr(net, k).copy_(torch.tensor(state[k], dtype=torch.float64))
        return net


@dataclass(frozen=True)
class FitConfig:
    """Training recipe (NNLUT.md §1.4; the open choices are documented in the module docstring)."""

    entries: int = 16
    samples: int = 100_000
    batch: int = 2048
    steps: int = 6000
    lr: float = 1e-3
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    init: str = "paper"
    seed: int = 0
    relative: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def knot_quantiles(op: OpSpec, k: int, grid: int = 20001) -> torch.Tensor:
    """k knots in [lo, hi] at the quantiles (i/(k−1)) of the density ∝ √|f''| + 5 % uniform floor.

    f'' from central differences on a uniform grid of ``grid`` points; returns [k], increasing.
    """
    x = torch.linspace(op.lo, op.hi, grid, dtype=torch.float64)
    h = x[1] - x[0]
    y = op.fn(x)
    f2 = torch.zeros_like(y)
    f2[1:-1] = (y[2:] - 2 * y[1:-1] + y[:-2]) / h**2
    f2[0], f2[-1] = f2[1], f2[-2]
    dens = f2.abs().sqrt()
    dens = dens + 0.05 * dens.mean()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((dens[1:] + dens[:-1]) / 2 * h, 0)])
    cdf = cdf / cdf[-1]
    q = torch.linspace(0, 1, k, dtype=torch.float64)
    idx = torch.searchsorted(cdf, q).clamp(1, grid - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    w = ((q - c0) / (c1 - c0).clamp(min=1e-300)).clamp(0, 1)
    return x[idx - 1] + w * h


def spread_breakpoints(op: OpSpec, hidden: int, sign: int) -> torch.Tensor:
    """H breakpoints [H] for the ``"spread"`` init of units that all have n-sign ``sign``.

    Knots q_0 = lo < q_1 < … < q_H = hi from ``knot_quantiles``. With n > 0 the segment left of
    the first breakpoint is all-inactive (output 0), with n < 0 the one right of the last: that
    zero segment is placed where the secant of f through the two outermost knots of that side
    crosses 0 (if beyond the range, else at lo / hi), so the edge segment can still match f
    at the range edge. Breakpoints: n > 0: [x0, q_1..q_{H−1}]; n < 0: [q_1..q_{H−1}, x0].
    """
    q = knot_quantiles(op, hidden + 1)
    (e, i), inner = ((0, 1), q[1:-1]) if sign > 0 else ((-1, -2), q[1:-1])
    fe, fi = op.fn(q[e]), op.fn(q[i])
    slope = (fi - fe) / (q[i] - q[e])
    x0 = q[e] - fe / slope if slope != 0 else q[e]
    x0 = torch.minimum(x0, q[e]) if sign > 0 else torch.maximum(x0, q[e])
    return torch.cat([x0.view(1), inner]) if sign > 0 else torch.cat([inner, x0.view(1)])


def knot_grid(op: OpSpec, hidden: int, per_interval: int = 32) -> torch.Tensor:
    """The least-squares grid of the ``"spread"`` init: ``per_interval`` + 1 evenly spaced points in
    each interval between consecutive ``knot_quantiles`` (so every segment weighs the same,
    however narrow: uniform samples would all but ignore e.g. the steep (0.1, 0.2) of 1/√x)."""
    q = knot_quantiles(op, hidden + 1)
    w = torch.linspace(0, 1, per_interval + 1, dtype=torch.float64)
    return (q[:-1, None] + (q[1:] - q[:-1])[:, None] * w).reshape(-1)


def init_network(op: OpSpec, hidden: int, init: str, gen: torch.Generator) -> ReluNet:
    """A fresh ``ReluNet`` with ``hidden`` units initialised per ``init`` (module docstring)."""
    net = ReluNet(hidden)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(hidden)
        net.m.copy_((torch.rand(hidden, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
        if init == "paper":
            if op.n_sign == 0:
                net.n.copy_(torch.randn(hidden, generator=gen, dtype=torch.float64))
                net.b.copy_(torch.randn(hidden, generator=gen, dtype=torch.float64))
            else:
                u = lambda: 0.01 + 0.99 * torch.rand(hidden, generator=gen, dtype=torch.float64)  # noqa: E731
                net.n.copy_(u() * op.n_sign)
                net.b.copy_(u() * op.b_sign)
        elif init == "spread":
            sign = op.n_sign if op.n_sign != 0 else 1
            d = spread_breakpoints(op, hidden, sign)
            net.n.fill_(float(sign))
            net.b.copy_(-sign * d)
            xg = knot_grid(op, hidden)
            a = torch.relu(xg.unsqueeze(-1) * net.n + net.b)
            # gelsd (SVD): bitwise repeatable here; the default gelsy varied in the last bits
            net.m.copy_(torch.linalg.lstsq(a, op.fn(xg).unsqueeze(-1), driver="gelsd").solution.squeeze(-1))
        else:
            raise ValueError(f"unknown init {init!r}; valid: paper, spread")
    return net


def training_samples(op: OpSpec, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` inputs ~ U(lo, hi) and their exact labels, float64 [count] each."""
    xs = op.lo + (op.hi - op.lo) * torch.rand(count, generator=gen, dtype=torch.float64)
    return xs, op.fn(xs)


def train_network(net: ReluNet, xs: torch.Tensor, ys: torch.Tensor, cfg: FitConfig,
                  gen: torch.Generator) -> ReluNet:
    """Adam + multi-step decay on the L1 loss mean|net(x) − y| over minibatches (in place).

    Minibatches of ``cfg.batch`` from a fresh random permutation each epoch of ``xs`` [S].
    Gradients are written out by hand (no autograd: ~3× faster for 15 units); they equal
    autograd's (``tests/test_nnlut.py``), with ∂|r|/∂r = sign(r) (0 at r = 0, as torch) and
    ∂ReLU(z)/∂z = [z > 0]. Adam is torch.optim.Adam's update (β = 0.9, 0.999; ε = 1e-8;
    bias-corrected), the lr dropping by ``gamma`` at each milestone step.

    ``cfg.relative`` (ours; off for the paper recipe): Adam runs on relative changes δ with
    p = p₀·(1 + δ), so each parameter moves by ~lr of its own size per step: a breakpoint moves in
    proportion to its distance from 0 and a unit's output in proportion to itself. In raw
    coordinates a unit with b ≈ 2000 (a breakpoint near 1024 with |n| = 1) turns one step of 1e-4
    in m into a jump of 0.2 in the output; used for calibration, which starts from a good table.
    """
    p0 = torch.stack([net.n.detach(), net.b.detach(), net.m.detach()])
    p = _adam_l1(p0, xs, ys, cfg, gen)
    with torch.no_grad():
        net.n.copy_(p[0]), net.b.copy_(p[1]), net.m.copy_(p[2])
    return net


def _adam_l1(p0: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, cfg: FitConfig, gen: torch.Generator) -> torch.Tensor:
    """The optimisation loop of ``train_network`` from p₀ = [n; b; m] ([3, H]); returns the new p."""
    q = torch.zeros_like(p0) if cfg.relative else p0.clone()       # δ or p itself
    mom, vel = torch.zeros_like(p0), torch.zeros_like(p0)
    miles = sorted(int(f * cfg.steps) for f in cfg.milestones)
    b1, b2, eps = 0.9, 0.999, 1e-8
    per_epoch = max(1, xs.numel() // cfg.batch)
    perm = torch.randperm(xs.numel(), generator=gen)
    for step in range(cfg.steps):
        j = step % per_epoch
        if j == 0 and step > 0:
            perm = torch.randperm(xs.numel(), generator=gen)
        idx = perm[j * cfg.batch:(j + 1) * cfg.batch]
        p = p0 * (1 + q) if cfg.relative else q
        grad = l1_grad(p, xs[idx], ys[idx])
        if cfg.relative:
            grad = grad * p0
        lr = cfg.lr * cfg.gamma ** sum(step >= s for s in miles)
        mom.mul_(b1).add_(grad, alpha=1 - b1)
        vel.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = step + 1
        denom = (vel / (1 - b2**t)).sqrt_().add_(eps)
        q.addcdiv_(mom, denom, value=-lr / (1 - b1**t))
    return p0 * (1 + q) if cfg.relative else q


def l1_grad(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of mean_k |Σ_i m_i·ReLU(n_i·x_k + b_i) − y_k| w.r.t. p = [n; b; m] ([3, H]).

    x, y: [B]. Returns [3, H]: (∂n, ∂b, ∂m).
    """
    n, b, m = p[0], p[1], p[2]
    z = torch.addr(b.expand(x.numel(), -1), x, n)                # [B, H]
    a = z.clamp(min=0)
    g = torch.sign(a @ m - y) / x.numel()                        # [B]
    gz = (z > 0) * (g.unsqueeze(1) * m)                          # [B, H]
    return torch.stack([x @ gz, gz.sum(0), g @ a])


def fit_network(op: str | OpSpec, cfg: FitConfig = FitConfig()) -> ReluNet:
    """Fit one approximator for ``op`` (name in ``OPS`` or an ``OpSpec``) with ``cfg.entries − 1`` units."""
    spec = OPS[op] if isinstance(op, str) else op
    gen = torch.Generator().manual_seed(cfg.seed)
    xs, ys = training_samples(spec, cfg.samples, gen)
    net = init_network(spec, cfg.entries - 1, cfg.init, gen)
    return train_network(net, xs, ys, cfg, gen)
