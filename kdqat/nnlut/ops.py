"""GELU, softmax and LayerNorm built from NN-LUTs, and the swap into HF BERT-family models (NNLUT.md §1.3, §1.5).

* ``LutGELU``: y = LUT_gelu(x), elementwise, any shape.
* ``lut_softmax(scores, dim=-1)``: x = scores − max(scores) (max detached: a constant shift, as in
  hardware), clamped below at the exp table's range edge −256 (saturation: HF's additive mask is
  ≈ −3.4e38 and linear extrapolation there would overflow), e = LUT_exp(x), S = Σ_dim e clamped
  below at 1 (exactly S ≥ 1 since exp(0) = 1, §1.3; with LUT_exp(0) slightly below 1, S < 1 would
  be scaled by 2^10 into the table's inaccurate top end), out = e·LUT_recip(S).
  Half-precision scores are computed in float32 and cast back.
* ``LutLayerNorm``: mean μ and biased variance σ² over the normalized dims computed exactly,
  r = LUT_rsqrt(σ² + ε) (with the table's power-of-two input scaling, §1.5),
  y = (x − μ)·r·γ + β. γ, β are the *same* Parameter objects as the replaced nn.LayerNorm's.

Table sets (``TABLE_SETS``): ``"paper"``: GELU (−5, 5), exp (−256, 0), 1/x (1, 1024), 1/√x [1, 1024]
with S = 2^10 scaling (NNLUT.md Table 1 + §1.5); ``"narrow"`` (ours): the same GELU and exp, 1/x on
[1, 2) with S = 2 and 1/√x on [1, 4) with S = 4, which keep a small relative error at every
input (see ``results/nnlut_error.md``). Each table: 16 entries by default, the cached init with the
smaller max error (``load_table(init="best")``).

``swap_nonlinearities(model)`` replaces modules in place and returns a ``LutSwap`` handle
(also a context manager) whose ``restore()`` puts the original modules back. GELU: every
``transformers.activations.GELUActivation`` or ``nn.GELU(approximate="none")`` (BERT's
``BertIntermediate.intermediate_act_fn`` from ``ACT2FN["gelu"]``); LayerNorm: every
``nn.LayerNorm``. Softmax is not a module in HF BERT: the handle's ``softmax_fn`` (a
``LutSoftmax``) is what the caller passes to ``kdqat.capture.Capture(model, softmax_fn=...)``,
which calls it as ``softmax_fn(scores)`` on the masked scores [B, H, S, S] and takes the
softmax over the last dim. Every swapped module gets its own copy of the table (so that
``kdqat.nnlut.calibrate`` can refit it per layer); all softmax calls share one table pair.
``swap_ibert(model, ops)`` does the same with I-BERT's modules (``kdqat.nnlut.ibert``).
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from kdqat.nnlut.lut import Lut, load_table
from kdqat.nnlut.network import OPS

OP_NAMES = ("gelu", "softmax", "layernorm")
EXP_FLOOR = OPS["exp"].lo
TABLE_SETS = {"paper": {"gelu": "gelu", "exp": "exp", "recip": "recip", "rsqrt": "rsqrt_s"},
              "narrow": {"gelu": "gelu", "exp": "exp", "recip": "recip_n", "rsqrt": "rsqrt_n"}}


@functools.lru_cache(maxsize=None)
def _default(op: str, entries: int) -> Lut:
    return load_table(op, entries)


def default_tables(entries: int = 16, table_set: str = "paper") -> dict[str, Lut]:
    """{"gelu", "exp", "recip", "rsqrt"} → cached ``Lut`` of ``TABLE_SETS[table_set]`` (shared; copy before editing)."""
    if table_set not in TABLE_SETS:
        raise ValueError(f"unknown table_set {table_set!r}; valid: {', '.join(TABLE_SETS)}")
    return {k: _default(op, entries) for k, op in TABLE_SETS[table_set].items()}


class LutGELU(nn.Module):
    """y = LUT(x) elementwise; ``lut`` defaults to the cached 16-entry GELU table."""

    def __init__(self, lut: Lut | None = None):
        super().__init__()
        self.lut = lut if lut is not None else copy.deepcopy(_default("gelu", 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lut(x)


class LutSoftmax(nn.Module):
    """Callable ``(scores, dim=-1) -> probs`` (see the module docstring). While ``self.record`` is a
    list, each call appends (exp-LUT inputs, recip-LUT inputs) flattened, for calibration."""

    def __init__(self, exp_lut: Lut | None = None, recip_lut: Lut | None = None):
        super().__init__()
        self.exp = exp_lut if exp_lut is not None else copy.deepcopy(_default("exp", 16))
        self.recip = recip_lut if recip_lut is not None else copy.deepcopy(_default("recip", 16))
        self.record: list | None = None

    def forward(self, scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
        x = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
        x = (x - x.detach().amax(dim=dim, keepdim=True)).clamp(min=EXP_FLOOR)
        e = self.exp(x)
        total = e.sum(dim=dim, keepdim=True).clamp(min=1.0)
        if self.record is not None:
            self.record.append((x.detach().reshape(-1), total.detach().reshape(-1)))
        return (e * self.recip(total)).to(scores.dtype)


def lut_softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax from the default 16-entry exp and 1/x tables (a ready ``softmax_fn`` for Capture)."""
    return _softmax16()(scores, dim)


@functools.lru_cache(maxsize=None)
def _softmax16() -> LutSoftmax:
    return LutSoftmax(_default("exp", 16), _default("recip", 16))


class LutLayerNorm(nn.Module):
    """LayerNorm with an NN-LUT 1/√x (module docstring); built from an existing ``nn.LayerNorm``."""

    def __init__(self, ln: nn.LayerNorm, lut: Lut | None = None):
        super().__init__()
        self.normalized_shape, self.eps = tuple(ln.normalized_shape), ln.eps
        self.weight, self.bias = ln.weight, ln.bias          # shared Parameters (or None)
        self.rsqrt = lut if lut is not None else copy.deepcopy(_default("rsqrt_s", 16))

    def variance_input(self, x: torch.Tensor) -> torch.Tensor:
        """σ² + ε over the normalized dims, keepdim (the rsqrt LUT's input)."""
        dims = tuple(range(-len(self.normalized_shape), 0))
        return x.var(dim=dims, unbiased=False, keepdim=True) + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        mu = x.mean(dim=dims, keepdim=True)
        y = (x - mu) * self.rsqrt(self.variance_input(x))
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def _is_exact_gelu(mod: nn.Module) -> bool:
    if isinstance(mod, nn.GELU):
        return mod.approximate == "none"
    from transformers.activations import GELUActivation
    return isinstance(mod, GELUActivation)


class LutSwap:
    """Handle returned by ``swap_nonlinearities``: ``swapped`` {qualified name: new module},
    ``softmax_fn`` (a ``LutSoftmax`` or None), ``restore()``; usable as a context manager."""

    def __init__(self, model: nn.Module):
        self.model, self.swapped, self.softmax_fn = model, {}, None
        self._undo: list[tuple[nn.Module, str, nn.Module]] = []

    def replace(self, parent: nn.Module, attr: str, name: str, new: nn.Module) -> None:
        self._undo.append((parent, attr, getattr(parent, attr)))
        setattr(parent, attr, new)
        self.swapped[name] = new

    def restore(self) -> None:
        for parent, attr, old in reversed(self._undo):
            setattr(parent, attr, old)
        self._undo.clear()

    def __enter__(self) -> "LutSwap":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _swap(model: nn.Module, ops, make_gelu, make_ln, make_softmax) -> LutSwap:
    """Replace every exact GELU by ``make_gelu()`` and every ``nn.LayerNorm`` ``ln`` by ``make_ln(ln)``
    (for the ops named in ``ops``); ``softmax_fn = make_softmax()`` when "softmax" is in ``ops``."""
    bad = set(ops) - set(OP_NAMES)
    if bad:
        raise ValueError(f"unknown op(s) {sorted(bad)}; valid: {', '.join(OP_NAMES)}")
    handle = LutSwap(model)
    targets = []
    for pname, parent in model.named_modules():
        for attr, child in parent.named_children():
            name = f"{pname}.{attr}" if pname else attr
            if "gelu" in ops and _is_exact_gelu(child):
                targets.append((parent, attr, name, "gelu", make_gelu()))
            elif "layernorm" in ops and isinstance(child, nn.LayerNorm):
                targets.append((parent, attr, name, "layernorm", make_ln(child)))
    for op in ("gelu", "layernorm"):
        if op in ops and not any(t[3] == op for t in targets):
            raise ValueError(f"swap: asked for {op!r} but {type(model).__name__} has no such module")
    for parent, attr, name, _, new in targets:
        handle.replace(parent, attr, name, new)
    if "softmax" in ops:
        handle.softmax_fn = make_softmax()
    return handle


def swap_nonlinearities(model: nn.Module, ops=OP_NAMES, tables: dict[str, Lut] | None = None,
                        entries: int = 16, table_set: str = "paper") -> LutSwap:
    """Replace the non-linearities named in ``ops`` by NN-LUT versions, in place.

    ``tables`` overrides ``default_tables(entries, table_set)`` per key ("gelu", "exp", "recip",
    "rsqrt"); each swapped module gets a deep copy. Raises ValueError for an unknown op, or when "gelu"/"layernorm" is
    asked for and the model holds no such module.
    """
    tabs = {**default_tables(entries, table_set), **(tables or {})}
    return _swap(model, ops, lambda: LutGELU(copy.deepcopy(tabs["gelu"])),
                 lambda ln: LutLayerNorm(ln, copy.deepcopy(tabs["rsqrt"])),
                 lambda: LutSoftmax(copy.deepcopy(tabs["exp"]), copy.deepcopy(tabs["recip"])))


def swap_ibert(model: nn.Module, ops=OP_NAMES, ln_bits: int = 22) -> LutSwap:
    """Replace the non-linearities named in ``ops`` by I-BERT's (``kdqat.nnlut.ibert``: ``IGELU``,
    ``ISoftmax`` as ``softmax_fn``, ``ILayerNorm(bits=ln_bits)``), in place; same handle and errors
    as ``swap_nonlinearities``."""
    from kdqat.nnlut.ibert import IGELU, ILayerNorm, ISoftmax
    return _swap(model, ops, IGELU, lambda ln: ILayerNorm(ln, ln_bits), ISoftmax)
