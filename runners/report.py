"""``python -m runners.report registry/X.toml [--format md|json|csv] [--out DIR]`` and
``python -m runners.report --all``: rebuild a table from its run records and diff it against the
published numbers.

Per cell and metric: reproduced mean ± sample std (ddof 1, SPEC §12.3) over the seeds that have a
record, n, the published mean ± std, the difference and a status:
  within / outside   Welch's t-test (``scipy.stats.ttest_ind_from_stats``, unequal variances) of the
                     reproduced seeds against the published mean ± std with the published n (the
                     table's seed count unless the entry says), two-sided, α = 0.05; with one side
                     lacking a spread, a one-sample t-test against the other's mean; with n = 1 on
                     both sides: within iff |diff| ≤ published std (untestable without one)
  not run            no record yet;   failed: every job failed;   unavailable: model/data missing
  no published       the paper gives no number for this cell
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

from runners import records

ALPHA = 0.05
STATUSES = ("within", "outside", "untestable", "not run", "failed", "unavailable", "no published")


def _value(rec: dict, metric: str, selection: str) -> float | None:
    if metric == "score":
        return rec["score"] if selection == "best" else rec["score_last"]
    m = rec["metrics"]["best" if selection == "best" else "last"]
    return m.get(metric)


def _stats(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def compare(mean, std, n, pmean, pstd, pn) -> str:
    """Status of a reproduced (mean, std, n) against a published (mean, std, n); see module doc."""
    from scipy import stats
    if pmean is None:
        return "no published"
    if n >= 2 and std is not None and pstd and pn and pn >= 2:
        p = stats.ttest_ind_from_stats(mean, std, n, pmean, pstd, pn, equal_var=False).pvalue
    elif n >= 2 and std is not None and std > 0:
        p = 2 * stats.t.sf(abs(mean - pmean) / (std / math.sqrt(n)), n - 1)
    elif pstd and pn and pn >= 2:
        p = 2 * stats.t.sf(abs(mean - pmean) / (pstd * math.sqrt(1 + 1 / pn)), pn - 1)
    elif pstd:
        return "within" if abs(mean - pmean) <= pstd else "outside"
    else:
        return "untestable"
    return "within" if (p if not math.isnan(p) else 0.0) >= ALPHA else "outside"


def build(table, root: Path | None = None) -> list[dict]:
    """One entry per (row, column, metric) of ``table`` (teacher rows too), in table order."""
    jobs = table.jobs()
    by_cell: dict[str, list] = {}
    for j in jobs:
        for c in j.cells:
            by_cell.setdefault(c, []).append(j)
    out = []
    for cell in table.cells():
        sel = cell.config.get("protocol", {}).get("selection", "best")
        if cell.role == "teacher":
            sel = "best" if cell.config["train"].get("selection") == "best" else "last"
        metrics = list(cell.published) or ["score"]
        recs, fails = [], []
        for j in by_cell.get(cell.address, []):
            r = records.read_result(j.hash, root)
            (recs.append(r) if r else fails.append(records.read_failure(j.hash, root)))
        for metric in metrics:
            vals = [v for r in recs if (v := _value(r, metric, sel)) is not None]
            mean, std = _stats(vals)
            pub = cell.published.get(metric)
            pmean, pstd = (pub.mean, pub.std) if pub else (None, None)
            pn = (pub.n if pub and pub.n else len(cell.seeds)) if pub else None
            if vals:
                status = compare(mean, std, len(vals), pmean, pstd, pn)
            elif cell.unavailable or any(f and f.get("status") == "unavailable" for f in fails):
                status = "unavailable"
            elif fails and all(f for f in fails):
                status = "failed"
            else:
                status = "not run"
            out.append({"table": table.id, "row": cell.row, "column": cell.column, "metric": metric,
                        "row_label": cell.row_label, "column_label": cell.column_label,
                        "n": len(vals), "seeds": len(cell.seeds), "mean": mean, "std": std,
                        "published_mean": pmean, "published_std": pstd, "published_n": pn,
                        "diff": None if mean is None or pmean is None else mean - pmean, "status": status,
                        "selection": sel, "wall_s": sum(r.get("wall_s", 0.0) for r in recs),
                        "devices": sorted({r.get("device", "?") for r in recs}),
                        "commits": sorted({r.get("git_commit", "?") for r in recs}),
                        "versions": recs[0].get("versions", {}) if recs else {}})
    return out


def _fmt(m, s=None, d=2):
    if m is None:
        return "–"
    return f"{m:.{d}f}" + (f" ± {s:.{d}f}" if s is not None else "")


def averages(table, entries: list[dict]) -> list[dict]:
    """Per row and metric: published AVG, the average recomputed from the published cells, and the
    reproduced average (only when every column of the row has a reproduced mean)."""
    out = []
    for row in table.rows:
        for metric in sorted({e["metric"] for e in entries if e["row"] == row.id}):
            es = [e for e in entries if e["row"] == row.id and e["metric"] == metric]
            pubs = [e["published_mean"] for e in es if e["published_mean"] is not None]
            pavg = table.published_avg.get((row.id, metric))
            reps = [e["mean"] for e in es]
            recomputed = statistics.fmean(pubs) if pubs and len(pubs) == len(es) else None
            out.append({"row": row.id, "label": row.label, "metric": metric,
                        "published_avg": pavg.value if pavg else None, "recomputed_published_avg": recomputed,
                        "mismatch": bool(pavg and recomputed is not None and abs(pavg.value - recomputed) > 0.011),
                        "reproduced_avg": statistics.fmean(reps) if reps and None not in reps else None})
    return out


def markdown(table, entries: list[dict]) -> str:
    meta = table.meta
    metrics = sorted({e["metric"] for e in entries}, key=lambda m: (m != "score", m))
    lines = [f"# {meta.title}", "", f"{meta.paper}, table {meta.table} (`{meta.source}`). {meta.caption}", "",
             "Each cell: reproduced mean ± sample std (n seeds) / published mean ± std / difference / status "
             f"(Welch's t-test, two-sided, α = {ALPHA}; see `runners/report.py`).", ""]
    for metric in metrics:
        es = {(e["row"], e["column"]): e for e in entries if e["metric"] == metric}
        cols = [c for c in table.columns if any((r.id, c.id) in es for r in table.rows)]
        avg = {a["row"]: a for a in averages(table, entries) if a["metric"] == metric}
        if len(metrics) > 1:
            lines += [f"## Metric: {metric}", ""]
        lines.append("| Method | " + " | ".join(c.label for c in cols) + " | AVG (ours / paper) |")
        lines.append("|---" * (len(cols) + 2) + "|")
        for r in table.rows:
            cells = []
            for c in cols:
                e = es.get((r.id, c.id))
                if e is None:
                    cells.append("skipped")
                    continue
                ours = f"{_fmt(e['mean'], e['std'])} (n={e['n']})" if e["n"] else "–"
                paper = _fmt(e["published_mean"], e["published_std"])
                diff = f"{e['diff']:+.2f}" if e["diff"] is not None else "–"
                cells.append(f"{ours}<br>paper {paper}<br>Δ {diff} · {e['status']}")
            a = avg.get(r.id, {})
            cells.append(f"{_fmt(a.get('reproduced_avg'))} / {_fmt(a.get('published_avg'))}")
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Averages", "", "| Method | metric | published AVG | recomputed from published cells | ours |",
              "|---|---|---|---|---|"]
    for a in averages(table, entries):
        flag = " ⚠ does not add up" if a["mismatch"] else ""
        lines.append(f"| {a['label']} | {a['metric']} | {_fmt(a['published_avg'])} | "
                     f"{_fmt(a['recomputed_published_avg'])}{flag} | {_fmt(a['reproduced_avg'])} |")
    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    done = [e for e in entries if e["n"]]
    proto = table.cells()[-1].config.get("protocol", {}) if table.cells() else {}
    lines += ["", "## Protocol and provenance", "",
              "Status counts: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), "",
              f"Protocol (non-teacher cells; `kdqat.protocol`): `{json.dumps(proto, sort_keys=True)}`", "",
              f"Commits: {', '.join(sorted({c for e in done for c in e['commits']})) or '–'}; "
              f"devices: {', '.join(sorted({d for e in done for d in e['devices']})) or '–'}; "
              f"total compute {sum(e['wall_s'] for e in done if e['metric'] == metrics[0]) / 3600:.3f} h.", ""]
    vers = next((e["versions"] for e in done if e["versions"]), {})
    if vers:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())), ""]
    lines += [f"- {n}" for n in meta.notes] + [""]
    return "\n".join(lines)


def plot(table, entries: list[dict], path: Path) -> Path:
    """Published vs reproduced per cell with error bars (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    es = [e for e in entries if e["published_mean"] is not None or e["mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(es) + 2), 4.5))
    xs = range(len(es))
    ax.errorbar([x - 0.15 for x in xs], [e["published_mean"] if e["published_mean"] is not None else math.nan for e in es],
                yerr=[e["published_std"] or 0 for e in es], fmt="o", label="published", capsize=3)
    ax.errorbar([x + 0.15 for x in xs], [e["mean"] if e["mean"] is not None else math.nan for e in es],
                yerr=[e["std"] or 0 for e in es], fmt="s", label="reproduced", capsize=3)
    ax.set_xticks(list(xs), [f"{e['row']}/{e['column']}" + (f" ({e['metric']})" if e["metric"] != "score" else "")
                             for e in es], rotation=75, fontsize=7)
    ax.set_title(f"{table.id}: published vs reproduced")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_csv(entries: list[dict]) -> str:
    keys = ["table", "row", "column", "metric", "n", "mean", "std", "published_mean", "published_std", "diff", "status"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(entries)
    return buf.getvalue()


def report(path: str | Path, out: Path | None = None, fmt: str = "md", root: Path | None = None) -> dict:
    """Write ``<out>/<table>.md`` + ``.png`` (and ``.json``/``.csv`` on request); return a summary."""
    from runners.registry import load_table
    table = load_table(path)
    entries = build(table, root)
    out = out or records.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{table.id}.md").write_text(markdown(table, entries) + f"\n![published vs reproduced]({table.id}.png)\n")
    plot(table, entries, out / f"{table.id}.png")
    keys = ["table", "row", "column", "metric", "n", "mean", "std", "published_mean", "published_std", "diff", "status"]
    if fmt == "json":
        (out / f"{table.id}.json").write_text(json.dumps([{k: e[k] for k in keys} for e in entries], indent=1))
    elif fmt == "csv":
        (out / f"{table.id}.csv").write_text(write_csv(entries))
    return {"table": table.id, "title": table.meta.title, "path": str(path), "entries": entries}


def index(summaries: list[dict], out: Path) -> Path:
    """``results/README.md``: every table with its coverage and a link to its report."""
    lines = ["# Results", "", "Regenerated by `python -m runners.report --all`. Coverage counts cells × metrics.", "",
             "| table | title | cells run / total | within published spread | published cells | report |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        es = s["entries"]
        run = sum(e["n"] > 0 for e in es)
        within = sum(e["status"] == "within" for e in es)
        pub = sum(e["published_mean"] is not None for e in es)
        lines.append(f"| `{s['table']}` | {s['title']} | {run} / {len(es)} | {within} | {pub} | "
                     f"[{s['table']}.md]({s['table']}.md) |")
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runners.report", description=__doc__.split("\n")[0])
    p.add_argument("table", nargs="?", help="registry/X.toml")
    p.add_argument("--all", action="store_true", help="every registry/*.toml and results/README.md")
    p.add_argument("--format", default="md", choices=["md", "json", "csv"])
    p.add_argument("--out", type=Path, help="output folder (default results/)")
    args = p.parse_args(argv)
    from runners.registry import RegistryError
    if not args.all and not args.table:
        p.error("give a registry file or --all")
    paths = sorted((records.REPO / "registry").glob("*.toml")) if args.all else [Path(args.table)]
    out = args.out or records.results_dir()
    summaries = []
    try:
        for path in paths:
            s = report(path, out, args.format)
            summaries.append(s)
            if args.format == "json" and not args.all:
                keys = ["table", "row", "column", "metric", "n", "mean", "std", "published_mean",
                        "published_std", "status"]
                print(json.dumps([{k: e[k] for k in keys} for e in s["entries"]], indent=1))
            else:
                print(f"{s['table']}: {out / (s['table'] + '.md')}")
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.all:
        print(index(summaries, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
