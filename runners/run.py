"""``python -m runners.run registry/X.toml [--rows ..] [--columns ..] [--seeds ..] [--dry-run]
[--device cpu|cuda] [--max-steps N]``: run every job of a table (teachers first), skip finished
ones, write records atomically, mirror them to MLflow. Exit 0 when every job is done, 1 when some
failed or are unavailable, 2 on a bad registry file (nothing written).
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
    return p


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
                  f"{', '.join(j.cells)}")
        print(f"{len(jobs)} jobs ({sum(j.config['role'] == 'teacher' for j in jobs)} teachers)")
        return 0
    from tqdm import tqdm

    from runners import job as runner
    from runners import records, tracking
    failed = []
    t0 = time.time()
    bar = tqdm(jobs, desc=table.id, unit="job")
    for j in bar:
        bar.set_postfix_str(j.cells[0] if j.cells else j.hash)
        if records.read_result(j.hash):
            continue
        rec = runner.execute(j, device=args.device)
        if rec["status"] != "done":
            failed.append(rec)
            tqdm.write(f"[{rec['status']}] {', '.join(j.cells) or j.hash}: {rec['error']}")
        elif not args.no_mlflow:
            tracking.mirror(table.id, rec, list(j.cells))
    print(f"{table.id}: {len(jobs) - len(failed)}/{len(jobs)} jobs done in {time.time() - t0:.1f}s")
    for rec in failed:
        print(f"  {rec['status']}: {', '.join(rec['cells']) or rec['job']}: {rec['error'][:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
