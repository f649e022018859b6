"""Run records: one folder per job under ``results/runs/<job-hash>/`` (the file-layout policy).

- ``result.json``: written atomically (temp file + ``os.replace``) when the job finishes; its
  presence means "done, never run again".
- ``failure.json``: the last failed attempt (status "failed" or "unavailable", the error); removed
  when the job later succeeds.
- ``ckpt.pt``: the training checkpoint (resume after a kill); removed once ``result.json`` exists.
- ``model/``: a teacher's fine-tuned weights (``save_pretrained``), read by the QAT jobs.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    return Path(os.environ.get("KDQAT_RESULTS", REPO / "results"))


def job_dir(job_hash: str, root: Path | None = None) -> Path:
    return (root or results_dir()) / "runs" / job_hash


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_result(job_hash: str, root: Path | None = None) -> dict | None:
    p = job_dir(job_hash, root) / "result.json"
    return json.loads(p.read_text()) if p.exists() else None


def read_failure(job_hash: str, root: Path | None = None) -> dict | None:
    p = job_dir(job_hash, root) / "failure.json"
    return json.loads(p.read_text()) if p.exists() else None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "datasets", "evaluate", "lm_eval", "accelerate", "mlflow", "kdqat-repro"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
