"""Executors: run a table's jobs here (sequentially or N at once), on Slurm (submitit) or on Ray.

One interface, ``Executor.run(jobs, on_done) -> [record]``, and one contract for all three:

* a job whose ``result.json`` exists is skipped, so a rerun after a partial sweep runs only what
  is missing (``runners.records``);
* a QAT/PTQ job starts only after its teacher job has ended (``runners.job.execute`` turns a QAT
  job whose teacher failed into a "blocked" record); Slurm runs one array per dependency level
  (teachers, then the rest) and resource group;
* each worker writes its job's record atomically; the parent reads it back. A worker that dies
  without a record (killed, out of memory) gets a failure record written by the parent; no other
  job's record is touched;
* ``on_done(job, record)`` runs in the PARENT after each job, in completion order: the MLflow
  mirror lives there (sqlite is not multi-writer safe; with ``MLFLOW_TRACKING_URI`` pointing at a
  tracking server the parent still does it, one writer is enough).

Workers call ``runners.worker.run_job`` (``runners.job.execute``, or a torchrun relaunch for a
"ddp" device plan). Per-job resources (``resources`` in the table; CLI flags fill what is unset):
gpus, cpus, mem_gb, hours, device_plan.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from runners import records, worker

OnDone = Callable[[object, dict], None]


def _require(module: str, extra: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"the {extra} executor needs {module}: pip install 'kdqat-repro[{extra}]'")


def pending(jobs: list, root: Path | None = None) -> list:
    """The jobs without a result, in the given (teachers first) order."""
    return [j for j in jobs if records.read_result(j.hash, root) is None]


def _blocked_by(job, waiting: set[str]) -> bool:
    t = getattr(job, "teacher", None)
    return t is not None and t.hash in waiting


def drive(jobs: list, launch: Callable, wait: Callable, slots: int, on_done: OnDone, root: Path) -> list[dict]:
    """Dependency-aware pool: ``launch(job) -> handle`` at most ``slots`` at once, a job only when
    its teacher is not pending; ``wait(handles) -> (handle, crash message or None)`` blocks until
    one ends. Returns the records in completion order."""
    todo, waiting = list(jobs), {j.hash for j in jobs}
    running: dict = {}
    out = []
    while todo or running:
        for j in [j for j in todo if not _blocked_by(j, waiting)][:max(0, slots - len(running))]:
            todo.remove(j)
            try:
                running[launch(j)] = j
            except Exception as e:  # noqa: BLE001 - e.g. more GPUs asked than a worker has
                waiting.discard(j.hash)
                rec = worker.crash_record(j, f"not launched: {type(e).__name__}: {e}", root)
                on_done(j, rec)
                out.append(rec)
        if not running:
            continue
        handle, crashed = wait(list(running))
        j = running.pop(handle)
        waiting.discard(j.hash)
        rec = worker.outcome(j, root, crashed)
        on_done(j, rec)
        out.append(rec)
    return out


class Executor:
    """Base: ``run(jobs, on_done)`` executes every pending job of ``jobs`` and returns their records."""
    name = "base"

    def __init__(self, device: str = "cpu", root: Path | None = None):
        self.device, self.root = device, Path(root) if root else records.results_dir()

    def run(self, jobs: list, on_done: OnDone) -> list[dict]:
        raise NotImplementedError


def visible_devices() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


class LocalExecutor(Executor):
    """``workers == 1``: every job in this process, in order (the default). ``workers = N``: N jobs
    at once, each in its own subprocess (``python -m runners.worker``) that owns
    ``len(visible_devices()) // N`` GPUs (``CUDA_VISIBLE_DEVICES``) and ``threads`` torch threads
    (default ``cores // N``). ``python`` is the argv prefix of a worker (a wrapper such as
    ``nsys profile python -m runners.worker``; tests inject faults with it)."""
    name = "local"

    def __init__(self, workers: int = 1, device: str = "cpu", root: Path | None = None,
                 python: tuple[str, ...] | None = None, threads: int | None = None):
        super().__init__(device, root)
        self.workers, self.python = max(1, int(workers)), python
        self.threads_given = threads
        self.threads = threads or max(1, len(os.sched_getaffinity(0)) // self.workers)
        self.groups: list[list[str]] = [[] for _ in range(self.workers)]
        if device == "cuda" and self.workers > 1:
            devs = visible_devices()
            k = len(devs) // self.workers
            if k == 0:
                raise ValueError(f"--workers {self.workers} needs one GPU each; visible: {devs or 'none'}")
            self.groups = [devs[i * k:(i + 1) * k] for i in range(self.workers)]

    def run(self, jobs: list, on_done: OnDone) -> list[dict]:
        todo = pending(jobs, self.root)
        if self.workers == 1:
            out = []
            for j in todo:
                rec = worker.run_job(j, self.device, self.root, self.threads_given)
                on_done(j, rec)
                out.append(rec)
            return out
        threads = self.threads
        free, slot_of = list(range(self.workers)), {}
        with tempfile.TemporaryDirectory(prefix="kdqat-jobs-") as tmp:
            def launch(j):
                slot = free.pop(0)
                _, nproc = worker.plan(j)
                gpus = self.groups[slot]
                if self.device == "cuda" and nproc > len(gpus):
                    raise ValueError(f"job {j.hash} needs {nproc} GPUs; a local worker has {len(gpus)}")
                pkl = Path(tmp) / f"{j.hash}.pkl"
                pkl.write_bytes(pickle.dumps(j))
                env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if self.device == "cuda" else \
                    {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)}
                argv = worker.command(pkl, self.device, self.root, threads, nproc,
                                      **({"python": self.python} if self.python else {}))
                p = subprocess.Popen(argv, env=worker.child_env(env), cwd=worker.REPO)
                slot_of[p] = slot
                return p

            def wait(procs):
                while True:
                    for p in procs:
                        if p.poll() is not None:
                            free.append(slot_of.pop(p))
                            return p, None if p.returncode == 0 else f"worker exited with code {p.returncode}"
                    time.sleep(0.1)

            return drive(todo, launch, wait, self.workers, on_done, self.root)


class SlurmExecutor(Executor):
    """submitit: one job array per dependency level (teachers, then QAT/PTQ) and per distinct
    resources, submitted when the previous level has ended; logs under ``<root>/slurm/<job id>/``.
    ``cluster``: None (auto: Slurm when ``sbatch`` exists), "slurm", "local" or "debug" (tests).
    ``defaults``: resources for jobs whose table leaves them unset (gpus, cpus, mem_gb, hours);
    ``partition``, ``array_parallelism`` and ``extra`` (``slurm_*`` submitit parameters without
    the prefix, e.g. ``{"account": "x", "qos": "y"}``) apply to every array."""
    name = "slurm"

    def __init__(self, device: str = "cuda", root: Path | None = None, cluster: str | None = None,
                 partition: str | None = None, defaults: dict | None = None, array_parallelism: int | None = None,
                 extra: dict | None = None):
        super().__init__(device, root)
        _require("submitit", "slurm")
        self.cluster, self.partition, self.extra = cluster, partition, dict(extra or {})
        self.defaults = {"gpus": 1 if device == "cuda" else 0, "cpus": 4, "hours": 4.0, **(defaults or {})}
        self.array_parallelism = array_parallelism

    def _resources(self, job) -> dict:
        return {**self.defaults, **(getattr(job, "resources", None) or {})}

    def _executor(self, res: dict):
        import submitit
        ex = submitit.AutoExecutor(folder=self.root / "slurm" / "%j", cluster=self.cluster)
        setup = [f"export PYTHONPATH={worker.REPO}:$PYTHONPATH"]
        params = {"timeout_min": max(1, int(round(float(res["hours"]) * 60))), "cpus_per_task": int(res["cpus"]),
                  "gpus_per_node": int(res["gpus"]), "name": "kdqat", "local_setup": setup, "slurm_setup": setup}
        if res.get("mem_gb"):
            params["mem_gb"] = float(res["mem_gb"])
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.array_parallelism:
            params["slurm_array_parallelism"] = self.array_parallelism
        params.update({f"slurm_{k}": v for k, v in self.extra.items()})
        ex.update_parameters(**params)
        return ex

    def run(self, jobs: list, on_done: OnDone) -> list[dict]:
        import submitit
        todo = pending(jobs, self.root)
        levels = [[j for j in todo if j.role == "teacher"], [j for j in todo if j.role != "teacher"]]
        out = []
        for level in levels:
            groups: dict[tuple, list] = {}
            for j in level:
                groups.setdefault(tuple(sorted(self._resources(j).items())), []).append(j)
            submitted = {}
            for key, js in groups.items():
                res = dict(key)
                n = len(js)
                sj = self._executor(res).map_array(worker.run_job, js, [self.device] * n, [self.root] * n,
                                                   [int(res["cpus"])] * n)
                submitted.update({s.job_id: (j, s) for j, s in zip(js, sj)})
            poll = 1 if self.cluster in ("local", "debug") else 15
            for done in submitit.helpers.as_completed([s for _, s in submitted.values()], poll_frequency=poll):
                j, s = submitted[done.job_id]
                try:
                    s.result()
                    crashed = None
                except Exception as e:  # noqa: BLE001 - a dead array task is that job's failure only
                    crashed = f"slurm job {s.job_id}: {type(e).__name__}: {str(e)[-1500:]}"
                rec = worker.outcome(j, self.root, crashed)
                on_done(j, rec)
                out.append(rec)
        return out


class RayExecutor(Executor):
    """Ray: ``ray.init(address=address)`` joins an existing cluster ("auto" or "ray://host:10001"),
    or starts a local instance with ``num_cpus`` when ``address`` is None; one task per job with
    its GPU/CPU request (``resources``; ``gpus`` defaults to 1 on CUDA, 0 on CPU); a QAT task is
    submitted when its teacher's task has ended. Workers need this repository importable (the
    driver passes ``PYTHONPATH``; on a multi-node cluster install it at the same path everywhere)
    and the results root on a shared file system."""
    name = "ray"
    ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "KDQAT_DATA_DIR", "KDQAT_LM_EVAL_TASKS",
           "TOKENIZERS_PARALLELISM")

    def __init__(self, device: str = "cpu", root: Path | None = None, address: str | None = None,
                 num_cpus: int | None = None, defaults: dict | None = None):
        super().__init__(device, root)
        _require("ray", "ray")
        self.address, self.num_cpus = address, num_cpus
        self.defaults = {"gpus": 1 if device == "cuda" else 0, "cpus": 1, **(defaults or {})}

    def run(self, jobs: list, on_done: OnDone) -> list[dict]:
        import ray
        started = not ray.is_initialized()
        if started:
            env = {k: os.environ[k] for k in self.ENV if k in os.environ}
            env["PYTHONPATH"] = worker.child_env()["PYTHONPATH"]
            ray.init(address=self.address, num_cpus=None if self.address else self.num_cpus,
                     runtime_env={"env_vars": env}, log_to_driver=False)
        task = ray.remote(worker.run_job)

        def launch(j):
            res = {**self.defaults, **(getattr(j, "resources", None) or {})}
            _, nproc = worker.plan(j)
            gpus = max(int(res["gpus"]), nproc) if self.device == "cuda" else 0
            return task.options(num_cpus=int(res["cpus"]), num_gpus=gpus, max_retries=0).remote(
                j, self.device, str(self.root), int(res["cpus"]))

        def wait(refs):
            (ref,), _ = ray.wait(refs, num_returns=1)
            try:
                ray.get(ref)
                return ref, None
            except Exception as e:  # noqa: BLE001 - a crashed task is that job's failure only
                return ref, f"ray task failed: {type(e).__name__}: {str(e)[-1500:]}"
        try:
            return drive(pending(jobs, self.root), launch, wait, len(jobs), on_done, self.root)
        finally:
            if started:
                ray.shutdown()


EXECUTORS = {"local": LocalExecutor, "slurm": SlurmExecutor, "ray": RayExecutor}
