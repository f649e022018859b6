"""The worker side of ``runners.executors``: run ONE job in this process, or data parallel.

``python -m runners.worker JOB.pkl [--device cpu|cuda] [--root DIR] [--threads N]`` executes the
pickled ``runners.registry.Job`` with ``runners.job.execute`` (its record lands atomically in
``<root>/runs/<hash>/``) and exits 0 whatever the job's status; a non-zero exit means the worker
itself died. :func:`run_job` is the same thing as a function (the Slurm and Ray executors ship it).

Device plans (``job.resources``): "single" (default) runs here; "ddp" or "fsdp" with ``gpus = W > 1``
relaunches this module under ``torchrun --standalone --nproc-per-node W`` (on CPU: W gloo
processes) and waits; each rank runs the job inside ``kdqat.distributed.data_parallel`` (DDP replicas or FSDP2 shards). Rank 0
writes the real record (plus ``"distributed": {world, backend, plan}``); rank r > 0 runs the same
job against a scratch results root ``<job dir>/rank<r>/`` (teacher linked in, rank 0's checkpoint
copied in so that all ranks resume at the same step: checkpoints hold full tensors under both
plans) that is removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runners import records

REPO = Path(__file__).resolve().parents[1]


def plan(job) -> tuple[str, int]:
    """(device plan, processes) of a job from its resources."""
    res = getattr(job, "resources", None) or {}
    p = res.get("device_plan") or "single"
    return p, (int(res.get("gpus") or 1) if p in ("ddp", "fsdp") else 1)


def set_threads(threads: int | None) -> None:
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch
        torch.set_num_threads(threads)


def crash_record(job, error: str, root: Path | None) -> dict:
    """The failure record of a job whose worker died (no record of its own); written unless the
    job has a result after all."""
    done = records.read_result(job.hash, root)
    if done:
        return done
    fail = {"job": job.hash, "cells": list(job.cells), "config": job.config, "seed": job.config["seed"],
            "role": job.config["role"], "status": "failed", "error": error}
    records.write_json_atomic(records.job_dir(job.hash, root) / "failure.json", fail)
    return fail


def outcome(job, root: Path | None, crashed: str | None) -> dict:
    """The job's record after its worker ended: result, else (worker ended normally) its failure
    record, else a crash record saying why the worker died."""
    rec = records.read_result(job.hash, root)
    if rec is not None:
        return rec
    if crashed is None:
        fail = records.read_failure(job.hash, root)
        if fail is not None:
            return fail
        crashed = "worker ended without writing a record"
    return crash_record(job, crashed, root)


def command(pkl: Path, device: str, root: Path, threads: int | None, nproc: int = 1,
            python: tuple[str, ...] = (sys.executable, "-m", "runners.worker")) -> list[str]:
    """argv that runs the pickled job: ``python`` + args, under torchrun when ``nproc > 1``."""
    args = [str(pkl), "--device", device, "--root", str(root)] + (["--threads", str(threads)] if threads else [])
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "runners.worker", *args]
    return [*python, *args]


def child_env(extra: dict | None = None) -> dict:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_job(job, device: str = "cpu", root: Path | str | None = None, threads: int | None = None) -> dict:
    """Execute ``job`` here (or under torchrun for a "ddp" / "fsdp" plan) and return its record."""
    root = Path(root) if root else records.results_dir()
    p, nproc = plan(job)
    if nproc > 1:
        with tempfile.TemporaryDirectory() as d:
            pkl = Path(d) / "job.pkl"
            pkl.write_bytes(pickle.dumps(job))
            rc = subprocess.run(command(pkl, device, root, threads, nproc), env=child_env(), cwd=REPO).returncode
        return outcome(job, root, None if rc == 0 else f"torchrun exited with code {rc}")
    set_threads(threads)
    from runners.job import execute
    return execute(job, device=device, root=root)


def _rank_main(job, device: str, root: Path, threads: int | None) -> None:
    """One rank of a data-parallel job (module docstring)."""
    from kdqat import distributed
    from runners.job import execute
    ctx = distributed.init(device)
    set_threads(max(1, (threads or 1) // ctx.world) if device == "cpu" else threads)
    if records.read_result(job.hash, root):   # every rank decides alike: done means nothing to run
        return
    jdir = records.job_dir(job.hash, root)
    scratch = jdir / f"rank{ctx.rank}"
    if not ctx.is_main:
        shutil.rmtree(scratch, ignore_errors=True)
        if job.teacher is not None:
            link = records.job_dir(job.teacher.hash, scratch)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(records.job_dir(job.teacher.hash, root).resolve(), target_is_directory=True)
        if (jdir / "ckpt.pt").exists():
            records.job_dir(job.hash, scratch).mkdir(parents=True, exist_ok=True)
            shutil.copy2(jdir / "ckpt.pt", records.job_dir(job.hash, scratch) / "ckpt.pt")
    distributed.barrier()
    with distributed.data_parallel(ctx, plan(job)[0]):
        rec = execute(job, device=ctx.device, root=root if ctx.is_main else scratch)
    distributed.barrier()
    if ctx.is_main and rec.get("status") == "done":
        rec["distributed"] = {"world": ctx.world, "backend": ctx.backend, "plan": plan(job)[0]}
        records.write_json_atomic(jdir / "result.json", rec)
    if not ctx.is_main:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runners.worker", description=__doc__.split("\n")[0])
    ap.add_argument("job", help="pickled runners.registry.Job")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", help="results root (default: KDQAT_RESULTS or results/)")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args(argv)
    job = pickle.loads(Path(a.job).read_bytes())
    root = Path(a.root) if a.root else records.results_dir()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _rank_main(job, a.device, root, a.threads)
    else:
        run_job(job, a.device, root, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
