"""``python -m runners.run registry/X.toml [--rows ..] [--columns ..] [--seeds ..] [--dry-run]
[--estimate] [--device cpu|cuda] [--max-steps N] [--executor local|slurm|ray] [--workers N]``: run
every job of a table (teachers first), skip finished ones, write records atomically, mirror them
to MLflow. Exit 0 when every job is done, 1 when some failed or are unavailable, 2 on a bad
registry file or bad executor options (nothing written).

Executors (``runners.executors``): ``local`` (default; ``--workers N`` runs N jobs at once, one
GPU each or cores/N threads each on CPU), ``slurm`` (submitit job arrays; ``--slurm-cluster
local`` runs them as local subprocesses), ``ray`` (``--ray-address`` of a running cluster, or a
local instance). ``--estimate`` prints the table's cost in GPU-hours (``runners.estimate``).
"""
from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runners.run", description=__doc__.split("\n")[0])
    p.add_argument("table", help="registry/X.toml")
    p.add_argument("--rows", nargs="*", help="row ids to run (default: all)")
    p.add_argument("--columns", nargs="*", help="column ids to run (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: the table's)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs, write nothing")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--max-steps", type=int, help="cap every job's optimizer steps (changes job hashes)")
    p.add_argument("--no-mlflow", action="store_true", help="do not mirror records to MLflow")
    p.add_argument("--estimate", action="store_true", help="print the cost in GPU-hours, run nothing")
    p.add_argument("--gpu", default="h100", help="--estimate: device model (runners.estimate.PEAK)")
    p.add_argument("--mfu", type=float, help="--estimate: achieved fraction of peak (default per precision)")
    x = p.add_argument_group("executors")
    x.add_argument("--executor", default="local", choices=["local", "slurm", "ray"])
    x.add_argument("--workers", type=int, default=1, help="local: jobs at once (subprocesses)")
    x.add_argument("--threads", type=int, help="local workers: torch threads each (default cores/workers)")
    x.add_argument("--gpus", type=int, help="slurm/ray: GPUs per job where the table sets none")
    x.add_argument("--cpus", type=int, help="slurm/ray: CPUs per job where the table sets none")
    x.add_argument("--mem-gb", type=float, help="slurm: memory per job where the table sets none")
    x.add_argument("--hours", type=float, help="slurm: time limit per job where the table sets none")
    x.add_argument("--partition", help="slurm partition")
    x.add_argument("--array-parallelism", type=int, help="slurm: tasks of an array running at once")
    x.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], help="submitit cluster (default: auto)")
    x.add_argument("--slurm-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more submitit slurm_* parameters, e.g. account=abc qos=high")
    x.add_argument("--ray-address", help="ray cluster address ('auto', 'ray://host:10001'); default: local")
    x.add_argument("--ray-num-cpus", type=int, help="CPUs of a local ray instance")
    return p


def make_executor(args):
    """The executor the options name (``runners.executors``); ValueError on bad options."""
    from runners import executors as ex
    given = {k: v for k, v in (("gpus", args.gpus), ("cpus", args.cpus), ("mem_gb", args.mem_gb),
                               ("hours", args.hours)) if v is not None}
    if args.executor == "local":
        return ex.LocalExecutor(workers=args.workers, device=args.device, threads=args.threads)
    if args.executor == "slurm":
        extra = dict(kv.split("=", 1) for kv in args.slurm_extra if "=" in kv)
        if len(extra) != len(args.slurm_extra):
            raise ValueError(f"--slurm-extra takes KEY=VALUE pairs, got {args.slurm_extra}")
        return ex.SlurmExecutor(device=args.device, cluster=args.slurm_cluster, partition=args.partition,
                                defaults=given, array_parallelism=args.array_parallelism, extra=extra)
    return ex.RayExecutor(device=args.device, address=args.ray_address, num_cpus=args.ray_num_cpus,
                          defaults={k: v for k, v in given.items() if k in ("gpus", "cpus")})


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from runners.registry import RegistryError, load_table
    try:
        table = load_table(args.table, max_steps=args.max_steps) if args.max_steps else load_table(args.table)
        jobs = table.jobs(rows=args.rows, columns=args.columns, seeds=args.seeds)
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for j in jobs:
            t = j.teacher.hash if j.teacher is not None else "-"
            print(f"{j.hash}  {j.config['role']:<7}  teacher={t:<12}  steps={j.steps if j.steps else '?':>6}  "
                  f"{', '.join(j.cells)}{'  [unavailable]' if j.unavailable else ''}")
        print(f"{len(jobs)} jobs ({sum(j.config['role'] == 'teacher' for j in jobs)} teachers)")
        return 0
    if args.estimate:
        from runners import estimate
        try:
            print(estimate.render(estimate.estimate(table, jobs, gpu=args.gpu, mfu=args.mfu)))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        executor = make_executor(args)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from runners import executors, tracking
    failed = []
    t0 = time.time()
    todo = executors.pending(jobs, executor.root)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{table.id} [{executor.name}]", unit="job")

    def on_done(j, rec):
        bar.update(1)
        bar.set_postfix_str(j.cells[0] if j.cells else j.hash)
        if rec["status"] != "done":
            failed.append(rec)
            tqdm.write(f"[{rec['status']}] {', '.join(j.cells) or j.hash}: {rec['error']}")
        elif not args.no_mlflow:
            tracking.mirror(table.id, rec, list(j.cells))

    executor.run(todo, on_done)
    bar.close()
    print(f"{table.id}: {len(jobs) - len(failed)}/{len(jobs)} jobs done in {time.time() - t0:.1f}s")
    for rec in failed:
        print(f"  {rec['status']}: {', '.join(rec['cells']) or rec['job']}: {rec['error'][:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
