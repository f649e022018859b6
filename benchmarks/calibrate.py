"""Measured seconds per training step and per dev example on this machine's GPU, for
``runners.estimate`` (issue: "--estimate ... from measured throughput where a calibration run exists").

Times the encoder steps of ``benchmarks/step_overhead.py`` (the recipes' own steps: teacher
fine-tune = forward + CE + backward + clip + AdamW; QAT-KD = teacher forward in ``Capture`` +
W2A8 student forward + KD loss of the named method + backward + BertAdam, SPEC §6.1) on random
weights of the real shapes (speed depends on shapes, not values; the hub is not needed), at every
(batch, max_len) the GLUE tables use. fp32 with TF32 off, as the encoder jobs run (SPEC §6).
Per entry: 3 warm-up steps, then the mean of ``--steps`` steps between two
``torch.cuda.synchronize()``; dev forward: mean over ``--steps`` batches, divided by the batch.

    python benchmarks/calibrate.py --device cuda --out results/calibration/h100.json

The JSON: ``{"gpu", "torch", "transformers", "date", "note", "entries": [{"model", "role",
"method", "quant", "batch_size", "max_len", "s_per_step", "eval_s_per_example"}]}``;
``runners.estimate`` reads every ``results/calibration/*.json`` whose ``gpu`` names ``--gpu``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_overhead  # noqa: E402

# Hub models' shapes (their config.json on the hub): layers, hidden, heads.
SHAPES = {"bert-base-uncased": (12, 768, 12), "bert-large-uncased": (24, 1024, 16)}
GEOMETRIES = [(32, 128), (32, 64), (16, 64)]          # (batch_size, max_len) of the GLUE task presets
METHODS = ["ternarybert", "map", "output", "map+output"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, steps: int, device: str, warmup: int = 3) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def measure(model: str, batch: int, seq: int, device: str, steps: int) -> list[dict]:
    layers, hidden, heads = SHAPES[model]
    args = SimpleNamespace(layers=layers, hidden=hidden, heads=heads, batch=batch, seq=seq, device=device)
    out = []
    fp = step_overhead.fp_step_fn(args)
    out.append({"model": model, "role": "teacher", "method": None, "quant": None, "batch_size": batch,
                "max_len": seq, "s_per_step": time_fn(fp, steps, device),
                "eval_s_per_example": time_fn(fp.evaluate, steps, device) / batch})
    del fp
    for method in METHODS:
        step, close = step_overhead.qat_step_fn(args, method=method)
        out.append({"model": model, "role": "qat", "method": method, "quant": "kim2022_w2a8",
                    "batch_size": batch, "max_len": seq, "s_per_step": time_fn(step, steps, device),
                    "eval_s_per_example": time_fn(step.evaluate, steps, device) / batch})
        close()
        del step, close
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import transformers
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    res = {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
           "date": dt.date.today().isoformat(), "steps": args.steps,
           "note": "benchmarks/calibrate.py: random weights of the real shapes, fp32 (TF32 off)", "entries": []}
    for model in args.models:
        for batch, seq in GEOMETRIES:
            for e in measure(model, batch, seq, args.device, args.steps):
                res["entries"].append(e)
                print(f"{model:20s} {e['role']:7s} {str(e['method']):12s} b{batch:<3d} L{seq:<4d} "
                      f"{e['s_per_step'] * 1e3:8.1f} ms/step  {e['eval_s_per_example'] * 1e3:7.3f} ms/dev example",
                      flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
