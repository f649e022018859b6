"""Approximation-error table for NN-LUT and I-BERT (NNLUT.md §4 protocol).

``python -m kdqat.nnlut.errors --out results/nnlut_error.md``

For each scalar op (GELU, exp, 1/x, 1/√x, SiLU) and method, the error e = approx(x) − f(x)
over three input sets inside the op's range [lo, hi] (all evaluated in float64):

* ``uniform``: 100 001 evenly spaced points;  ``log``: 100 001 log-spaced points (1/x, 1/√x);
* ``fp16``: every finite float16 value in [lo, hi].

Metrics (reductions over the set's N points): max|e|, mean|e| = Σ|e|/N, RMSE = √(Σe²/N) and,
for exp, 1/x, 1/√x, max relative error max |e| / max(|f|, 2^−14). Methods: NN-LUT with 16 / 32
entries from each init (``paper``, ``spread``), I-BERT's float formulas and integer simulations
(``kdqat.nnlut.ibert``; input scale S = 2^−12 for i-GELU/i-exp; fixed point F = 10 for i-sqrt),
and NN-LUT-16 with float16 parameters and arithmetic (fp16 set only).
Also: I-BERT's Table-1 GELU comparison on [−4, 4] (L2 = RMSE over a 80 001-point uniform grid,
L∞ = max|e|) next to the published numbers, and the LUT ≡ network check of every cached table.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from kdqat.nnlut import ibert
from kdqat.nnlut.lut import load_network, load_table
from kdqat.nnlut.network import OPS

INT_SCALE = 2.0**-12
INITS = ("paper", "spread")
REL_OPS = ("exp", "recip", "rsqrt")
# I-BERT Table 1 (L2, L∞) of GELU approximations on [−4, 4] (NNLUT.md §3).
PUBLISHED_GELU = {"h-GELU": (0.031, 0.068), "x·σ(1.702x)": (0.012, 0.020), "i-GELU": (0.0082, 0.018)}


def fp16_grid(lo: float, hi: float) -> torch.Tensor:
    """All finite float16 values in [lo, hi], as float64, sorted."""
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16).double()
    v = v[torch.isfinite(v) & (v >= lo) & (v <= hi)]
    return torch.unique(v)


def input_sets(op: str) -> dict[str, torch.Tensor]:
    spec = OPS[op]
    sets = {"uniform": torch.linspace(spec.lo, spec.hi, 100_001, dtype=torch.float64)}
    if spec.log_grid:
        sets["log"] = torch.logspace(math.log10(spec.lo), math.log10(spec.hi), 100_001, dtype=torch.float64)
    sets["fp16"] = fp16_grid(spec.lo, spec.hi)
    return sets


def metrics(approx: torch.Tensor, exact: torch.Tensor, rel: bool) -> dict[str, float]:
    e = (approx.double() - exact).abs()
    out = {"max": float(e.max()), "mean": float(e.mean()), "rmse": float(e.pow(2).mean().sqrt())}
    out["rel"] = float((e / exact.abs().clamp(min=2.0**-14)).max()) if rel else float("nan")
    return out


def _int_gelu(x):
    q, s = ibert.i_gelu_int(ibert.quantize_int(x, INT_SCALE), INT_SCALE)
    return q.double() * s


def _int_exp(x):
    q, s = ibert.i_exp_int(ibert.quantize_int(x, INT_SCALE), INT_SCALE)
    return q.double() * s


# Tables evaluated on each op's range: the op's own table plus the scaled variants of the same function.
VARIANTS = {"recip": ("recip", "recip_n"), "rsqrt": ("rsqrt", "rsqrt_s", "rsqrt_n")}


def table_label(table: str, entries: int, init: str) -> str:
    spec = OPS[table]
    scaled = "" if spec.scale_log2 is None else f", [{spec.lo:g},{spec.hi:g}) ×2^{spec.scale_log2} scaling"
    return f"NN-LUT-{entries} {table} ({init} init{scaled})"


def methods(op: str) -> dict[str, callable]:
    """{label: approx(x float64) -> float64} for one row block."""
    out = {}
    for table in VARIANTS.get(op, (op,)):
        for entries in (16, 32):
            for init in INITS:
                out[table_label(table, entries, init)] = load_table(table, entries, init)
    ibert_rows = {
        "gelu": {"I-BERT i-GELU (float)": ibert.i_gelu, "I-BERT i-GELU (int, S=2^-12)": _int_gelu},
        "exp": {"I-BERT i-exp (float)": ibert.i_exp, "I-BERT i-exp (int, S=2^-12)": _int_exp},
        "rsqrt": {"I-BERT i-sqrt + int division (F=10)": ibert.i_rsqrt_int},
    }
    out.update(ibert_rows.get(op, {}))
    return out


def error_rows(ops=("gelu", "exp", "recip", "rsqrt", "silu")) -> list[dict]:
    rows = []
    for op in ops:
        spec = OPS[op]
        sets = input_sets(op)
        for label, fn in methods(op).items():
            for set_name, x in sets.items():
                with torch.no_grad():
                    rows.append({"op": op, "method": label, "set": set_name, "n": x.numel(),
                                 **metrics(fn(x), spec.fn(x), op in REL_OPS)})
        lut16 = load_table(op, 16)
        x = sets["fp16"]
        with torch.no_grad():
            y = lut16(x.half()).double()
        label = table_label(op, 16, lut16.name.split("_")[-1]) + ", FP16 params+arith"
        rows.append({"op": op, "method": label, "set": "fp16", "n": x.numel(), **metrics(y, spec.fn(x), op in REL_OPS)})
    return rows


def gelu_ibert_rows() -> list[dict]:
    """GELU approximations on I-BERT's [−4, 4] protocol: L2 = RMSE on 80 001 uniform points."""
    x = torch.linspace(-4.0, 4.0, 80_001, dtype=torch.float64)
    f = OPS["gelu"].fn(x)
    fns = {"h-GELU": ibert.h_gelu, "x·σ(1.702x)": ibert.sigmoid_gelu, "i-GELU": ibert.i_gelu,
           "i-GELU (int, S=2^-12)": _int_gelu}
    for e in (16, 32):
        for init in INITS:
            fns[table_label("gelu", e, init)] = load_table("gelu", e, init)
    rows = []
    for label, fn in fns.items():
        with torch.no_grad():
            m = metrics(fn(x), f, rel=False)
        pub = PUBLISHED_GELU.get(label, (None, None))
        rows.append({"method": label, "l2": m["rmse"], "linf": m["max"], "pub_l2": pub[0], "pub_linf": pub[1]})
    return rows


def equivalence_rows(ops=tuple(OPS)) -> list[dict]:
    """max |LUT(x) − net(x)| over the op's uniform + log + fp16 sets and the breakpoints, float64."""
    rows = []
    for op in ops:
        spec = OPS[op]
        x = torch.cat(list(input_sets(op).values()))
        for entries in (16, 32):
            for init in INITS:
                lut, net = load_table(op, entries, init, scaled=False), load_network(op, entries, init)
                xs = torch.cat([x, lut.d])
                with torch.no_grad():
                    diff = float((lut(xs) - net(xs)).abs().max())
                inside = int(((lut.d > spec.lo) & (lut.d < spec.hi)).sum())
                rows.append({"table": f"{op}_{entries}_{init}", "entries": lut.entries,
                             "in_range": inside, "max_diff": diff})
    return rows


def _f(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3e}"


def render() -> str:
    lines = [
        "# NN-LUT and I-BERT approximation errors",
        "",
        "Generated by `python -m kdqat.nnlut.errors --out results/nnlut_error.md` (do not edit).",
        "Protocol: `kdqat/nnlut/errors.py` docstring (NNLUT.md §4). Tables: `kdqat/nnlut/tables/`",
        "(regenerate with `python -m kdqat.nnlut.lut`; recipe in `kdqat/nnlut/network.py`). Op ranges (the",
        "input sets): GELU (−5, 5), exp (−256, 0), 1/x (1, 1024), 1/√x (0.1, 1024) (NNLUT.md Table 1), SiLU (−8, 8)",
        "(ours). Tables evaluated there: the op's own table (trained on that range; 1/x with ×2^10 scaling,",
        "which is the identity inside it), and the tables trained on a narrower [lo, hi) and used with the",
        "exact power-of-two input scaling f(x) = 2^(−k·log2S·p)·LUT(x·S^k) (NNLUT.md §1.5; `rsqrt_s` is",
        "§1.5's [1, 1024) with S = 2^10, `recip_n`/`rsqrt_n` are our one-step-wide variants).",
        "Relative error: |e| / max(|f|, 2^−14). I-BERT replaces 1/x by an exact integer division (no row).",
        "",
        "## GELU on [−4, 4], I-BERT Table 1 protocol (L2 = RMSE over 80 001 uniform points, L∞ = max |e|)",
        "",
        "| method | L2 | L∞ | published L2 | published L∞ |",
        "|---|---|---|---|---|",
    ]
    for r in gelu_ibert_rows():
        lines.append(f"| {r['method']} | {r['l2']:.4f} | {r['linf']:.4f} | "
                     f"{'—' if r['pub_l2'] is None else r['pub_l2']} | {'—' if r['pub_linf'] is None else r['pub_linf']} |")
    lines += ["", "## Errors per op, method and input set", "",
              "| op | method | set | N | max abs | mean abs | RMSE | max rel |", "|---|---|---|---|---|---|---|---|"]
    for r in error_rows():
        lines.append(f"| {r['op']} | {r['method']} | {r['set']} | {r['n']} | {_f(r['max'])} | {_f(r['mean'])} | "
                     f"{_f(r['rmse'])} | {_f(r['rel'])} |")
    lines += ["", "## LUT ≡ network (float64, all input sets above plus the breakpoints)", "",
              "| table | LUT entries | breakpoints inside range | max abs(LUT − net) |", "|---|---|---|---|"]
    for r in equivalence_rows():
        lines.append(f"| {r['table']} | {r['entries']} | {r['in_range']} | {r['max_diff']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/nnlut_error.md"))
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
