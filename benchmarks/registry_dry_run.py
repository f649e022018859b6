"""Dry-run speed of the registry (DESIGN.md §5; target: well under 2 s including imports).

    python benchmarks/registry_dry_run.py [registry/glue_bert_large.toml] [--repeat 3]

Each measurement runs in a fresh interpreter so that import costs count:
  1. ``python -m runners.run TABLE --dry-run`` end to end (wall seconds, best of --repeat);
  2. the same work split into phases: import ``runners.registry``; import the ``kdqat`` modules
     the validators read (tasks, models, KD methods, quantization presets); ``load_table``; ``jobs()``.
The phase split shows where the time goes (``python -X importtime`` gives the detail per module).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import runners.registry as R
t1 = time.perf_counter()
import kdqat.data.tasks, kdqat.models
t2 = time.perf_counter()
import kdqat.kd.methods
t3 = time.perf_counter()
import kdqat.quant
t4 = time.perf_counter()
table = R.load_table(sys.argv[1])
t5 = time.perf_counter()
jobs = table.jobs()
t6 = time.perf_counter()
print(json.dumps({"import runners.registry": t1 - t0, "import kdqat tasks+models": t2 - t1,
                  "import kdqat.kd.methods": t3 - t2, "import kdqat.quant": t4 - t3,
                  "load_table": t5 - t4, "jobs()": t6 - t5, "n_jobs": len(jobs),
                  "torch imported": "torch" in sys.modules}))
"""


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table", nargs="?", default=str(ROOT / "registry" / "glue_bert_large.toml"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    walls = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "runners.run", args.table, "--dry-run"], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - t)
    print(f"dry run: {out.strip().splitlines()[-1]}; wall best {min(walls):.2f} s, "
          f"all {', '.join(f'{w:.2f}' for w in walls)} (cpu count {os.cpu_count()})")
    phases = json.loads(subprocess.run([sys.executable, "-c", PHASES, args.table], cwd=ROOT, env=_env(),
                                       capture_output=True, text=True, check=True).stdout)
    for k, v in phases.items():
        print(f"  {k:<28} {v:.3f} s" if isinstance(v, float) else f"  {k:<28} {v}")


if __name__ == "__main__":
    main()
