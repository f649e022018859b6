"""``python -m runners.run X.toml --estimate [--gpu h100] [--mfu F]``: what a table costs, in
GPU-hours per cell and in total, before anything runs.

Each job's cost comes from the best source available, in this order:

1. ``done``: its own result record (``wall_s``, times its GPUs);
2. ``measured``: seconds per optimizer step of a finished CUDA job with the same model, task,
   role, method, quant preset, batch size and sequence length (any seed, any table), times this
   job's steps (records carry ``wall_s`` and ``steps``; the record does not name the GPU model, so
   a calibration is only as good as the assumption that it ran on ``--gpu``);
3. ``benchmark``: ``calibration/<gpu>.json`` written by ``benchmarks/calibrate.py`` on that GPU
   (looked up in the results directory, then in the repository's ``results/``): seconds per step
   of the recipe's step for the same model, role, method, quant, batch size and max_len (random
   weights of the real shape; the task does not change an encoder step, inputs are padded to
   max_len), times the steps, plus seconds per dev example × dev examples × evaluations. Job
   start-up (model load, data, process) is not counted;
4. ``flops``: the FLOP model, stated in full in :func:`flops`: training ``6·N·T`` for the trained
   model, ``+ 2·N·T`` for the teacher forward of a KD job, dev evaluation ``2·N·T_dev`` per
   evaluation, all × ``QUANT_OVERHEAD`` for fake-quant jobs; time = FLOPs / (peak × MFU).
   ``N`` = the catalogue's ``params_b`` (embeddings included: an overestimate for short inputs,
   ~25 % for BERT-base), ``T`` = steps × batch size × max_len (encoders pad every example to
   max_len, SPEC §1.1). Peak is the dense datasheet number for the job's precision (encoders: fp32,
   SPEC §6; decoders: the ``precision`` switch, SPEC §7.2, §12.7); the MFU defaults are assumptions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from runners import records

# Dense peak FLOP/s (no sparsity) from NVIDIA's datasheets. fp32 = CUDA-core FP32 (PyTorch's
# default for fp32 matmuls: allow_tf32 is off); tf32/bf16 = Tensor Cores.
PEAK = {
    "h100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12,
             "source": "NVIDIA H100 SXM5 datasheet: FP32 67 TFLOPS, TF32 989 / BF16 1979 TFLOPS with 2:4 sparsity (halved: dense)"},
    "h100-pcie": {"fp32": 51e12, "tf32": 378e12, "bf16": 756e12,
                  "source": "NVIDIA H100 PCIe datasheet (dense = half the sparsity figures)"},
    "a100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "source": "NVIDIA A100 SXM4 datasheet (dense)"},
}
# Achieved fraction of peak: an ASSUMPTION for small-batch (32 x 128 tokens) BERT-size training with
# fake-quant elementwise kernels; override with --mfu or calibrate with a measured record.
MFU = {"fp32": 0.30, "tf32": 0.20, "bf16": 0.15}
# Fake-quant student step / full-precision step: 5.19 s / 4.09 s = 1.27, measured on CPU for the
# BERT-base shape (DESIGN.md, "Performance facts"); applied to QAT and PTQ jobs.
QUANT_OVERHEAD = 1.27


def dev_size(task: str) -> int:
    """Dev examples of ``task`` (``TaskSpec.dev_size``; 0 when unknown or the task is not built in)."""
    from kdqat.data.tasks import TASKS
    spec = TASKS.get(task)
    return int(spec.dev_size or 0) if spec is not None else 0


def _key(cfg: dict) -> tuple:
    m = cfg["model"]
    t = cfg.get("train") or {}
    return (m["name"] if isinstance(m, dict) else m, cfg["task"], cfg["role"], cfg.get("method"),
            cfg.get("quant"), t.get("batch_size"), t.get("max_len"))


def calibrations(root: Path | None = None) -> dict[tuple, float]:
    """{calibration key: seconds per step} from every finished CUDA job under ``root``."""
    out: dict[tuple, list[float]] = {}
    for p in (Path(root) if root else records.results_dir()).glob("runs/*/result.json"):
        rec = json.loads(p.read_text())
        if str(rec.get("device", "")).startswith("cuda") and rec.get("steps"):
            out.setdefault(_key(rec["config"]), []).append(rec["wall_s"] / rec["steps"])
    return {k: sum(v) / len(v) for k, v in out.items()}


def benchmark(gpu: str, root: Path | None = None) -> dict:
    """``{"source": path, "gpu": name, "entries": {key: (s_per_step, eval_s_per_example)}}`` from
    ``calibration/<gpu>.json`` (module docstring, source 3); ``{}`` when there is none. The key is
    :func:`_key` without the task."""
    for base in (Path(root) if root else records.results_dir(), records.REPO / "results"):
        path = base / "calibration" / f"{gpu}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            entries = {(e["model"], e["role"], e["method"], e["quant"], e["batch_size"], e["max_len"]):
                       (float(e["s_per_step"]), float(e["eval_s_per_example"])) for e in data["entries"]}
            shown = path.relative_to(records.REPO) if path.is_relative_to(records.REPO) else path
            return {"source": str(shown), "gpu": data.get("gpu", gpu), "entries": entries}
    return {}


def _n_evals(cfg: dict, steps: int) -> int:
    t = cfg.get("train") or {}
    if cfg["role"] == "teacher":
        return 1 if t.get("selection", "last") == "last" else int(t.get("epochs", 1)) + 1
    if cfg["role"] == "ptq":
        return 1
    if not t.get("eval_interval"):                   # decoders: before training and every epoch
        return int(t.get("epochs", 1)) + 1
    return steps // int(t["eval_interval"]) + 1    # + the SPEC §6.4 evaluation at t_total - 1


def params(cfg: dict) -> float:
    """Billions of parameters: the config's model entry, else the catalogue's ``params_b`` (the
    resolved config leaves presentation keys such as ``params_b`` out)."""
    from kdqat.models import CATALOGUE
    m = cfg["model"]
    name = m["name"] if isinstance(m, dict) else m
    own = m.get("params_b") if isinstance(m, dict) else None
    return float(own if own is not None else CATALOGUE.get(name, {}).get("params_b") or 0.0)


def flops(cfg: dict, steps: int) -> float:
    """Training + evaluation FLOPs of one job (module docstring)."""
    n = params(cfg) * 1e9
    t = cfg.get("train") or {}
    tokens = steps * int(t.get("batch_size") or 0) * int(t.get("max_len") or 0)
    per_token = 0.0 if cfg["role"] == "ptq" else 6 * n + (2 * n if cfg["role"] == "qat" else 0.0)
    dev_tokens = dev_size(cfg["task"]) * int(t.get("max_len") or 0) * _n_evals(cfg, steps)
    total = per_token * tokens + 2 * n * dev_tokens
    return total * (QUANT_OVERHEAD if cfg["role"] != "teacher" else 1.0)


def precision(cfg: dict) -> str:
    return (cfg.get("protocol") or {}).get("precision", "fp32")


def job_cost(job, gpu: str, mfu: float | None, cal: dict, root: Path | None, bench: dict | None = None) -> dict:
    """{"gpu_h", "source", "steps", "gpus"} of one job; source "done" | "measured" | "benchmark" |
    "flops" | "unavailable" (the job cannot run: 0) | "unknown steps" (gpu_h NaN, left out of
    totals). ``bench``: :func:`benchmark`'s result (None or {}: no benchmark source)."""
    gpus = max(1, int((getattr(job, "resources", None) or {}).get("gpus") or 1))
    rec = records.read_result(job.hash, root)
    if rec is not None:
        return {"gpu_h": rec["wall_s"] * gpus / 3600, "source": "done", "steps": rec.get("steps"), "gpus": gpus}
    if getattr(job, "unavailable", None):
        return {"gpu_h": 0.0, "source": "unavailable", "steps": job.steps, "gpus": gpus}
    steps = 0 if job.role == "ptq" else job.steps     # PTQ: no training, its evaluation only
    if steps is None:
        return {"gpu_h": math.nan, "source": "unknown steps", "steps": None, "gpus": gpus}
    key = _key(job.config)
    if key in cal:
        return {"gpu_h": cal[key] * steps * gpus / 3600, "source": "measured", "steps": steps, "gpus": gpus}
    hit = (bench or {}).get("entries", {}).get(key[:1] + key[2:])
    if hit is not None:
        s_step, s_dev = hit
        sec = s_step * steps + s_dev * dev_size(job.config["task"]) * _n_evals(job.config, steps)
        return {"gpu_h": sec * gpus / 3600, "source": "benchmark", "steps": steps, "gpus": gpus}
    prec = precision(job.config)
    rate = PEAK[gpu][prec] * (mfu if mfu else MFU[prec])
    return {"gpu_h": flops(job.config, steps) / rate / 3600, "source": "flops", "steps": steps, "gpus": gpus}


def estimate(table, jobs: list, gpu: str = "h100", mfu: float | None = None, root: Path | None = None,
             bench: dict | None = None) -> dict:
    """Per-cell and total GPU-hours of ``jobs`` (each job counted once: a shared teacher is listed
    under its teacher cell, or as "teacher of <model>/<task>" when the table has no teacher row).
    ``bench`` None: :func:`benchmark` of ``gpu``; ``{}``: no benchmark source."""
    if gpu not in PEAK:
        raise ValueError(f"unknown --gpu {gpu!r}; known: {', '.join(PEAK)}")
    cal = calibrations(root)
    bench = benchmark(gpu, root) if bench is None else bench
    cells: dict[str, dict] = {}
    counts: dict[str, int] = {}
    total = remaining = 0.0
    unknown = 0
    for j in jobs:
        c = job_cost(j, gpu, mfu, cal, root, bench)
        mname = j.config["model"]["name"] if isinstance(j.config["model"], dict) else j.config["model"]
        name = j.cells[0] if j.cells else f"teacher of {mname}/{j.config['task']}"
        row = cells.setdefault(name, {"cell": name, "role": j.role, "jobs": 0, "gpu_h": 0.0, "steps": c["steps"],
                                      "sources": set(), "precision": precision(j.config)})
        row["jobs"] += 1
        row["sources"].add(c["source"])
        counts[c["source"]] = counts.get(c["source"], 0) + 1
        if math.isnan(c["gpu_h"]):
            unknown += 1
            continue
        row["gpu_h"] += c["gpu_h"]
        total += c["gpu_h"]
        remaining += 0.0 if c["source"] == "done" else c["gpu_h"]
    prec = sorted({r["precision"] for r in cells.values()})
    assumptions = [f"peak ({gpu}): " + ", ".join(f"{p} {PEAK[gpu][p] / 1e12:g} TFLOPS" for p in prec)
                   + f" [{PEAK[gpu]['source']}]",
                   "MFU: " + ", ".join(f"{p} {mfu or MFU[p]:.2f}" for p in prec)
                   + (" (--mfu)" if mfu else " (assumed, module runners.estimate)"),
                   f"fake-quant overhead x{QUANT_OVERHEAD} (DESIGN.md CPU measurement, BERT-base shape)",
                   "FLOPs (source flops): 6·N·tokens train + 2·N·tokens teacher forward (KD) + 2·N·dev tokens per evaluation; "
                   "N = catalogue params_b (embeddings included)"]
    if bench:
        assumptions.append(f"benchmark: {bench['source']} ({bench['gpu']}; step and dev-forward times of "
                           "benchmarks/calibrate.py, job start-up not counted)")
    return {"table": table.id, "gpu": gpu, "cells": list(cells.values()), "total_gpu_h": total,
            "remaining_gpu_h": remaining, "unknown_jobs": unknown, "sources": counts, "assumptions": assumptions}


def render(est: dict) -> str:
    """A plain-text table of ``estimate``'s result."""
    lines = [f"{est['table']}: estimated cost on {est['gpu']}",
             f"{'cell':<44} {'role':<8} {'jobs':>4} {'steps/job':>9} {'GPU-h/job':>9} {'GPU-h':>8}  source"]
    for r in est["cells"]:
        per = r["gpu_h"] / r["jobs"]
        lines.append(f"{r['cell']:<44} {r['role']:<8} {r['jobs']:>4} {r['steps'] if r['steps'] else '?':>9} "
                     f"{per:>9.3f} {r['gpu_h']:>8.2f}  {'+'.join(sorted(r['sources']))}")
    lines.append(f"total {est['total_gpu_h']:.1f} GPU-h ({est['remaining_gpu_h']:.1f} GPU-h not yet run)"
                 + (f"; {est['unknown_jobs']} job(s) with unknown step counts not counted (the task has no "
                    "train_size: set it on the column)" if est["unknown_jobs"] else ""))
    lines += [f"  assumption: {a}" for a in est["assumptions"]]
    return "\n".join(lines)


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(table, gpu: str = "h100", root: Path | None = None) -> list[str]:
    """The report's "Cost" section: GPU-hours per cell (all seeds) on ``gpu`` and where each
    figure comes from (``done`` = the records' own wall time)."""
    est = estimate(table, table.jobs(), gpu=gpu, root=root)
    by_cell = {r["cell"]: r for r in est["cells"]}
    cols = [c for c in table.columns if any(f"{table.id}/{r.id}/{c.id}" in by_cell for r in table.rows)]
    lines = [f"## Cost (hours per cell, all seeds: finished jobs their own wall time x devices, the rest "
             f"estimated for {gpu})", "",
             "| Method | " + " | ".join(_esc(c.label) for c in cols) + " | row |", "|---" * (len(cols) + 2) + "|"]
    for r in table.rows:
        cells = [by_cell.get(f"{table.id}/{r.id}/{c.id}") for c in cols]
        if not any(cells):
            continue
        vals = [x["gpu_h"] if x else None for x in cells]
        unknown = [x is not None and "unknown steps" in x["sources"] for x in cells]
        lines.append(f"| {_esc(r.label)} | " + " | ".join("–" if v is None else "?" if u else f"{v:.3g}"
                                                    for v, u in zip(vals, unknown))
                     + f" | {'?' if any(unknown) else f'{sum(v for v in vals if v is not None):.3g}'} |")
    extra = [x for name, x in by_cell.items() if not name.startswith(f"{table.id}/")]
    lines += ["", (f"Shared teachers outside the table's rows: {sum(x['gpu_h'] for x in extra):.3g} GPU-h "
                   f"({sum(x['jobs'] for x in extra)} jobs). " if extra else "")
              + f"Total {est['total_gpu_h']:.3g} GPU-h, {est['remaining_gpu_h']:.3g} not yet run. Sources (jobs): "
              + ", ".join(f"{k} {v}" for k, v in sorted(est["sources"].items())) + " (`runners.estimate`)."
              + (" ?: the task has no train_size, so the step count is unknown and the job is left out of the "
                 "total." if est["unknown_jobs"] else "")]
    return lines + [f"- {a}" for a in est["assumptions"]]
