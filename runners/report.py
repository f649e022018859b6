"""``python -m runners.report registry/X.toml [--format md|json|csv] [--out DIR]`` and
``python -m runners.report --all``: rebuild a table from its run records (``runners.records``) and
diff it against the published numbers. Writes ``DIR/X.md`` and ``DIR/X.png`` (DIR: ``--out``, else
``$KDQAT_RESULTS``, else ``results/``); ``--format json|csv`` also writes ``X.json``/``X.csv`` and
prints it on stdout; ``--all`` does every ``registry/*.toml`` and the index ``DIR/README.md``.

Metrics of a cell: those its ``[published]`` entries name, then the others published in its column;
a column with none takes the task's report key if the table publishes it first in some cell (else
``"score"``), plus the metrics that are never first (e.g. "ppl"). Markdown blocks: metrics of the same
direction (LOWER_IS_BETTER or not) that never share a cell share a block (TSLD NLU: CoLA mcc with the
other tasks' acc, then ppl; encoder tables: one "score" block); the others get their own block.
Value of metric m in a record:
``"score"`` -> ``score`` (selection "best") or ``score_last`` ("last"), the task's report key
(SPEC §6.4); any other name -> ``metrics[selection][m]`` (the eval dict of the best or of the last
evaluation: a decoder's "acc" is read at the evaluation chosen by its selection key, the best PPL).
Selection: the protocol switch ``selection`` (SPEC §12.5, default best); the Full-Prec row uses
its teacher's ``train.selection`` (default last: the HF fine-tune keeps its last state).

Per cell and metric: mean and sample std (ddof 1, SPEC §12.3; none with n = 1) over the seeds that
have a record, n, published mean ± std with published n (the entry's ``n``, else the cell's seed
count), difference = ours − published, and a status:
  within / outside  p ≥ ALPHA / p < ALPHA, two-sided, ALPHA = 0.05, with p from:
                    Welch's t-test (unequal variances) when both sides have n ≥ 2 and a std;
                    a one-sample t-test of our seeds against the published mean when only ours has a
                    spread; a prediction test t = Δ / (s_pub·√(1 + 1/n_pub)), df n_pub − 1, when only
                    the published side has one. A spread of 0 on every side: within iff Δ = 0.
                    Non-finite values (diverged runs) are outside.
  no spread         neither side has a spread (e.g. the Full-Prec row: one teacher, one number)
  no published      the paper gives no number (Δ not shown, values still are)
  metric missing    records exist but none holds this metric
  unavailable       the model is marked unavailable, or a job failed with status "unavailable"
  failed            no record and at least one job failed (or was blocked by a failed teacher)
  not run           no record and no failure yet
A cell with some seeds done and some failed gets its status from the seeds done; n and the failure
count are shown. Published averages (SPEC §12.12): the recomputed mean of a row's published cells is
flagged when it differs from the published AVG by more than AVG_TOL (two-decimal rounding of the
cells and of the AVG add up to at most 0.01).
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
from runners.estimate import _esc
from runners.estimate import markdown as cost

ALPHA = 0.05
AVG_TOL = 0.01
LOWER_IS_BETTER = ("ppl", "loss")
STATUSES = ("within", "outside", "no spread", "no published", "metric missing", "unavailable", "failed",
            "not run")
FIELDS = ("table", "row", "column", "metric", "n", "mean", "std", "published_mean", "published_std",
          "published_n", "diff", "p_value", "status", "seeds", "failed", "selection", "per_seed")


def value(rec: dict, metric: str, selection: str) -> float | None:
    """The value of ``metric`` in a result record under ``selection`` ("best" | "last")."""
    if metric == "score":
        return rec["score" if selection == "best" else "score_last"]
    v = rec.get("metrics", {}).get(selection, {}).get(metric)
    return None if v is None else float(v)


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof 1); std is None for fewer than two values."""
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def p_value(mean, std, n, pmean, pstd, pn) -> float | None:
    """Two-sided p of ours (mean, std, n) vs published (pmean, pstd, pn); None: no test (module doc)."""
    from scipy import stats
    ours, theirs = n >= 2 and std is not None, bool(pn and pn >= 2 and pstd is not None)
    if ours and theirs:
        if std == 0 and pstd == 0:
            return 1.0 if mean == pmean else 0.0
        return float(stats.ttest_ind_from_stats(mean, std, n, pmean, pstd, pn, equal_var=False).pvalue)
    if ours or theirs:
        se, df = (std / math.sqrt(n), n - 1) if ours else (pstd * math.sqrt(1 + 1 / pn), pn - 1)
        if se == 0:
            return 1.0 if mean == pmean else 0.0
        return float(2 * stats.t.sf(abs(mean - pmean) / se, df))
    return None


def compare(mean, std, n, pmean, pstd, pn) -> tuple[str, float | None]:
    """(status, p) of a cell with n ≥ 1 reproduced values (module doc)."""
    if pmean is None:
        return "no published", None
    if not all(math.isfinite(x) for x in (mean, std or 0.0)):
        return "outside", None
    p = p_value(mean, std, n, pmean, pstd, pn)
    return ("no spread", None) if p is None else ("within" if p >= ALPHA else "outside", p)


def _metrics(table) -> dict[tuple[str, str], list[str]]:
    """Per cell, its metrics in block order (module doc): its own published ones, then the others of its
    column; else the task's report key (or "score") and the metrics never published first in a cell."""
    from kdqat.data.tasks import get_task
    lists: dict[tuple[str, str], list[str]] = {}
    for r, c, m in table.published:
        lists.setdefault((r, c), []).append(m)
    firsts = {ms[0] for ms in lists.values()}
    second = [m for ms in lists.values() for m in ms[1:] if m not in firsts]
    out = {}
    for cell in table.cells():
        own = lists.get((cell.row, cell.column), [])
        col = [m for (_, c), ms in lists.items() if c == cell.column for m in ms]
        key = get_task(cell.config["task"]).report_key
        fallback = [key if key in firsts else "score"] + second
        out[(cell.row, cell.column)] = list(dict.fromkeys(own + col)) or list(dict.fromkeys(fallback))
    return out


def _blocks(lists: list[list[str]]) -> dict[str, int]:
    """metric -> markdown block (module doc); blocks ordered by the metrics' earliest place in a cell."""
    order = sorted(dict.fromkeys(m for ms in lists for m in ms),
                   key=lambda m: min(ms.index(m) for ms in lists if m in ms))
    groups: list[list[str]] = []
    for m in order:
        g = next((g for g in groups if (g[0] in LOWER_IS_BETTER) == (m in LOWER_IS_BETTER)
                  and not any(m in ms and x in ms for ms in lists for x in g)), None)
        g.append(m) if g else groups.append([m])
    return {m: i for i, g in enumerate(groups) for m in g}


def _selection(cell) -> str:
    if cell.role == "teacher":
        return cell.config["train"].get("selection", "last")
    return cell.config.get("protocol", {}).get("selection", "best")


def build(table, root: Path | None = None) -> list[dict]:
    """One entry per (cell, metric), teacher rows included, row-major in table order."""
    by_cell: dict[str, list] = {}
    for j in table.jobs():
        for c in j.cells:
            by_cell.setdefault(c, []).append(j)
    out = []
    cell_metrics = _metrics(table)
    blocks = _blocks(list(cell_metrics.values()))
    for cell in table.cells():
        sel = _selection(cell)
        recs, fails = [], []
        for j in by_cell.get(cell.address, []):
            r = records.read_result(j.hash, root)
            if r is not None:
                recs.append((j.seed, r))
            elif (f := records.read_failure(j.hash, root)) is not None:
                fails.append(f)
        for metric in cell_metrics[(cell.row, cell.column)]:
            per_seed = {s: v for s, r in recs if (v := value(r, metric, sel)) is not None}
            vals = list(per_seed.values())
            mean, std = mean_std(vals)
            pub = cell.published.get(metric)
            pmean, pstd = (pub.mean, pub.std) if pub else (None, None)
            pn = (pub.n or len(cell.seeds)) if pub else None
            p = None
            if vals:
                status, p = compare(mean, std, len(vals), pmean, pstd, pn)
            elif recs:
                status = "metric missing"
            elif cell.unavailable or any(f.get("status") == "unavailable" for f in fails):
                status = "unavailable"
            else:
                status = "failed" if fails else "not run"
            out.append({"table": table.id, "row": cell.row, "column": cell.column, "metric": metric, "block": blocks[metric],
                        "row_label": cell.row_label, "column_label": cell.column_label,
                        "n": len(vals), "mean": mean, "std": std, "published_mean": pmean,
                        "published_std": pstd, "published_n": pn,
                        "diff": None if mean is None or pmean is None else mean - pmean, "p_value": p,
                        "status": status, "seeds": len(cell.seeds), "failed": len(fails), "selection": sel,
                        "per_seed": {str(s): v for s, v in per_seed.items()},
                        "note": cell.unavailable if status == "unavailable" and cell.unavailable else
                        next((f.get("error", "") for f in fails), "")})
    return out


def averages(table, entries: list[dict]) -> list[dict]:
    """Per row and metric block: the published AVG, the mean of the row's published cells (only when
    every cell of the row is published), the flag, and our mean of cell means (when every cell has one)."""
    out = []
    for row in table.rows:
        es_row = [e for e in entries if e["row"] == row.id]
        for block in dict.fromkeys(e["block"] for e in es_row):
            es = [e for e in es_row if e["block"] == block]
            metric = _block_name(es)
            pubs, ours = [e["published_mean"] for e in es], [e["mean"] for e in es]
            pavg = next((a for e in es if (a := table.published_avg.get((row.id, e["metric"])))), None)
            rec = statistics.fmean(pubs) if None not in pubs else None
            out.append({"row": row.id, "label": row.label, "metric": metric, "block": block,
                        "published_avg": pavg.value if pavg else None, "note": pavg.note if pavg else "",
                        "recomputed_published_avg": rec,
                        "mismatch": bool(pavg and rec is not None and abs(pavg.value - rec) > AVG_TOL + 1e-9),
                        "reproduced_avg": statistics.fmean(ours) if None not in ours else None})
    return out


def _block_name(es: list[dict]) -> str:
    return " / ".join(dict.fromkeys(e["metric"] for e in es))


def _f(m, s=None, d=2) -> str:
    if m is None:
        return "–"
    return f"{m:.{d}f}" + (f" ± {s:.{d}f}" if s is not None else "")


def _cell_md(e: dict) -> str:
    if e["status"] in ("unavailable", "failed", "not run", "metric missing"):
        ours = f"{e['status']}" + (f" ({e['failed']} failed)" if e["failed"] and e["status"] == "failed" else "")
        return f"{ours}<br>" + (f"paper {_f(e['published_mean'], e['published_std'])}"
                                if e["published_mean"] is not None else "no published number")
    n = f"n={e['n']}" + (f"/{e['seeds']}" if e["n"] != e["seeds"] else "")
    n += f", {e['failed']} failed" if e["failed"] else ""
    if e["published_mean"] is None:
        return f"**{_f(e['mean'], e['std'])}** ({n})<br>no published number"
    p = f" (p={e['p_value']:.2g})" if e["p_value"] is not None else ""
    return (f"**{_f(e['mean'], e['std'])}** ({n})<br>paper {_f(e['published_mean'], e['published_std'])}<br>"
            f"Δ {e['diff']:+.2f} · {e['status']}{p}")


def _keys(table) -> dict[str, str]:
    from kdqat.data.tasks import get_task
    return {c.column: get_task(c.config["task"]).report_key for c in table.cells()}


def markdown(table, entries: list[dict], root: Path | None = None) -> str:
    """The report: one table per metric, the averages, protocol and provenance (GitHub markdown)."""
    meta, avgs, keys = table.meta, averages(table, entries), _keys(table)
    lines = [f"# {_esc(meta.title)}", "", f"{meta.paper}, table {meta.table} (`{meta.source}`). {meta.caption}",
             "", "Each cell: **reproduced mean ± sample std** (ddof 1; n seeds with a record / seeds), the "
             "published mean ± std, Δ = ours − paper, and the status: *within* / *outside* = Welch's t-test "
             f"(two-sided, α = {ALPHA}; one-sample or prediction test when one side has no spread), *no spread* "
             "= nothing to test against. Rules: `runners/report.py`.", ""]
    blocks = list(dict.fromkeys(e["block"] for e in entries))
    for block in blocks:
        es = {(e["row"], e["column"]): e for e in entries if e["block"] == block}
        cols = [c for c in table.columns if any((r.id, c.id) in es for r in table.rows)]
        rows = [r for r in table.rows if any((r.id, c.id) in es for c in cols)]
        avg = {a["row"]: a for a in avgs if a["block"] == block}
        if len(blocks) > 1:
            lines += [f"## Metric: {_block_name(list(es.values()))}", ""]
        colm = {c: next(e["metric"] for (_, c2), e in es.items() if c2 == c) for (_, c) in es}
        head = [f"{_esc(c.label)}<br>({colm[c.id] if colm[c.id] != 'score' else keys.get(c.id, 'score')})"
                for c in cols]
        lines += ["| Method | " + " | ".join(head) + " | AVG ours / paper |", "|---" * (len(cols) + 2) + "|"]
        for r in rows:
            cells = [_cell_md(es[(r.id, c.id)]) if (r.id, c.id) in es else "skipped" for c in cols]
            a = avg.get(r.id, {})
            cells.append(f"{_f(a.get('reproduced_avg'))} / {_f(a.get('published_avg'))}")
            lines.append(f"| {_esc(r.label)} | " + " | ".join(cells) + " |")
        lines.append("")
    shown = [a for a in avgs if a["published_avg"] is not None or a["recomputed_published_avg"] is not None]
    lines += ["## Published averages", ""] + (["| Method | metric | published AVG | mean of the published cells | "
                                               "ours |", "|---|---|---|---|---|"] if shown else
                                              ["No published average, and no row with every cell published.", ""])
    for a in shown:
        flag = " ⚠ mismatch (SPEC §12.12)" if a["mismatch"] else ""
        lines.append(f"| {_esc(a['label'])} | {a['metric']} | {_f(a['published_avg'])} | "
                     f"{_f(a['recomputed_published_avg'], d=3)}{flag} | {_f(a['reproduced_avg'])} |")
    return "\n".join(lines + [""] + provenance(table, entries, root) + [""] + cost(table, root=root)) + "\n"


def _train(cells) -> str:
    """Main optimisation settings of a row's cells ("varies" where its columns differ)."""
    out = []
    for k in ("optimizer", "lr", "epochs", "batch_size", "max_steps"):
        vals = {c.config.get("train", {}).get(k) for c in cells}
        if vals != {None}:
            out.append(f"{k}={vals.pop() if len(vals) == 1 else 'varies'}")
    return ", ".join(out) or "–"


def provenance(table, entries: list[dict], root: Path | None = None) -> list[str]:
    """Protocol (switches shared by the QAT cells, deviations per cell), rows, and the records'
    commits, devices, versions and compute time (each job counted once)."""
    qat = [c for c in table.cells() if c.role != "teacher"]
    protos = {c.address: c.config.get("protocol", {}) for c in qat}
    common = {k: v for k, v in (next(iter(protos.values()), {})).items()
              if all(p.get(k) == v for p in protos.values())}
    lines = ["## Protocol and provenance", "", "Protocol switches shared by every QAT cell (`kdqat.protocol`): "
             + (", ".join(f"`{k}={v}`" for k, v in sorted(common.items())) or "–") + "."]
    for addr, p in protos.items():
        dev = {k: v for k, v in p.items() if k not in common}
        if dev:
            lines.append(f"- `{addr}`: " + ", ".join(f"`{k}={v}`" for k, v in sorted(dev.items())))
    lines += ["", "| Row | role | method | params | quant | train | models | seeds | selection |", "|---" * 9 + "|"]
    for r in table.rows:
        cs = [c for c in table.cells() if c.row == r.id]
        if not cs:
            continue
        c0, models = cs[0], sorted({c.config["model"]["name"] for c in cs})
        params = json.dumps(c0.config.get("params", {}), sort_keys=True) if r.role != "teacher" else "–"
        lines.append(f"| {_esc(r.label)} | {r.role} | {c0.config.get('method', 'fine-tune')} | `{_esc(params)}` | "
                     f"{c0.config.get('quant') or '–'} | {_train(cs)} | {', '.join(models)} | "
                     f"{', '.join(map(str, c0.seeds))} | "
                     f"{_selection(c0)} |")
    jobs = table.jobs()
    recs, fails, state = [], [], []
    for j in jobs:
        r = records.read_result(j.hash, root)
        f = None if r else records.read_failure(j.hash, root)
        recs += [r] if r else []
        fails += [f] if f else []
        state.append("done" if r else "unavailable" if j.unavailable or (f and f.get("status") == "unavailable")
                     else "failed" if f else "not run")
    versions = sorted({json.dumps(r.get("versions", {}), sort_keys=True) for r in recs})
    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    lines += ["", "Jobs (cell × seed, teachers included): " + ", ".join(f"{state.count(k)} {k}" for k in
                                                                   ("done", "failed", "unavailable", "not run"))
              + f", of {len(jobs)}. Cell statuses: "
              + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ".", "",
              f"Git commits: {', '.join(sorted({str(r.get('git_commit', '?')) for r in recs})) or '–'}. "
              f"Devices: {', '.join(sorted({str(r.get('device', '?')) for r in recs})) or '–'}. "
              f"Compute: {sum(r.get('wall_s', 0.0) for r in recs) / 3600:.3f} h in finished jobs"
              f" (+{sum(f.get('wall_s', 0.0) for f in fails) / 3600:.3f} h in failed ones)."]
    if recs:
        done = sorted(str(r.get("finished", "?")) for r in recs)
        lines.append(f"\nFinished between {done[0]} and {done[-1]}.")
    for v in versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {x}" for k, x in json.loads(v).items())]
    why = {}
    for e in entries:
        if e["status"] in ("failed", "unavailable") and e["note"]:
            why.setdefault((e["status"], e["note"][:300]), []).append(f"{e['row']}/{e['column']}")
    ncell = len(table.cells())
    lines += [""] + [f"{s.capitalize()} ({'every cell' if len(set(cs)) == ncell else ', '.join(dict.fromkeys(cs))}): "
                     f"{_esc(n)}" for (s, n), cs in why.items()]
    return lines + [""] + [f"- {_esc(n)}" for n in table.meta.notes]


def plot(table, entries: list[dict], path: Path) -> Path:
    """PNG: one panel per (metric, column) with a value, rows on x; published (circles) and reproduced
    (squares, red when outside) means with ± std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(m, c) for m in dict.fromkeys(e["metric"] for e in entries) for c in table.columns
              if any(e["metric"] == m and e["column"] == c.id and (e["mean"] is not None or
                                                                  e["published_mean"] is not None) for e in entries)]
    panels.sort(key=lambda mc: min(e["block"] for e in entries if e["metric"] == mc[0]))
    ncol = min(4, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(3.4 * ncol, 6.0), 2.9 * nrow + 0.6), squeeze=False)
    for ax, (metric, col) in zip(axes.flat, panels):
        es = [e for e in entries if e["metric"] == metric and e["column"] == col.id]
        xs = list(range(len(es)))
        pm = [e["published_mean"] if e["published_mean"] is not None else math.nan for e in es]
        ax.errorbar([x - 0.12 for x in xs], pm, yerr=[e["published_std"] or 0 for e in es], fmt="o",
                    color="tab:blue", capsize=3, label="published")
        for outside in (False, True):
            ys = [e["mean"] if e["mean"] is not None and (e["status"] == "outside") == outside else math.nan
                  for e in es]
            ax.errorbar([x + 0.12 for x in xs], ys, yerr=[e["std"] or 0 for e in es], fmt="s", capsize=3,
                        color="tab:red" if outside else "tab:orange", label="ours (outside)" if outside else "ours")
        ax.set_xticks(xs, [e["row"] for e in es], rotation=60, fontsize=7)
        ax.set_xlim(-0.5, len(es) - 0.5)
        ax.set_title(f"{col.label} ({metric})", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no published or reproduced numbers yet", ha="center", va="center")
    else:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{table.id}: published vs reproduced (mean ± std)", fontsize=10)
    h = fig.get_figheight()   # fixed margins in inches: tight_layout would draw the figure twice
    fig.subplots_adjust(left=0.6 / fig.get_figwidth(), right=0.98, top=1 - 0.75 / h, bottom=1.0 / h,
                        wspace=0.3, hspace=1.4 / 2.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _clean(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def as_json(entries: list[dict]) -> str:
    return json.dumps([{k: _clean(e[k]) for k in FIELDS} for e in entries], indent=1)


def as_csv(entries: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[k for k in FIELDS if k != "per_seed"], extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    w.writerows(entries)
    return buf.getvalue()


def report(path: str | Path, out: Path | None = None, fmt: str = "md", root: Path | None = None) -> dict:
    """Write ``<out>/<table>.md`` + ``.png`` (+ ``.json``/``.csv`` for those formats); return a summary
    {"table", "title", "path", "entries", "text"} (text: the json/csv written, else the md)."""
    from runners.registry import load_table
    table = load_table(path)
    entries = build(table, root)
    out = Path(out or records.results_dir())
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(table, entries, root) + f"\n![published vs reproduced]({table.id}.png)\n"
    (out / f"{table.id}.md").write_text(md, encoding="utf-8")
    plot(table, entries, out / f"{table.id}.png")
    text = {"json": as_json, "csv": as_csv}.get(fmt, lambda _: md)(entries)
    if fmt in ("json", "csv"):
        (out / f"{table.id}.{fmt}").write_text(text, encoding="utf-8")
    return {"table": table.id, "title": table.meta.title, "path": str(path), "entries": entries, "text": text}


def index(summaries: list[dict], out: Path) -> Path:
    """``<out>/README.md``: every table's coverage (cells with a record / cells; published numbers
    with a reproduced value; within / outside) and links; other reports in ``out`` listed below."""
    lines = ["# Results", "", "Regenerated by `python -m runners.report --all` from the run records "
             "(`results/runs/`). A cell is run when at least one seed has a record; *within* / *outside* count "
             f"published numbers (cell × metric) by Welch's t-test at α = {ALPHA} (see `runners/report.py`).", "",
             "| table | title | cells run / total | published numbers compared / total | within | outside | "
             "failed / unavailable cells | report |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        es = s["entries"]
        cells = {(e["row"], e["column"]) for e in es}
        run = {(e["row"], e["column"]) for e in es if e["n"]}
        bad = {(e["row"], e["column"]) for e in es if e["status"] in ("failed", "unavailable")}
        pub = [e for e in es if e["published_mean"] is not None]
        n = {k: sum(e["status"] == k for e in es) for k in ("within", "outside")}
        lines.append(f"| `{s['table']}` | {_esc(s['title'])} | {len(run)} / {len(cells)} | "
                     f"{sum(e['n'] > 0 for e in pub)} / {len(pub)} | {n['within']} | {n['outside']} | {len(bad)} | "
                     f"[{s['table']}.md]({s['table']}.md) |")
    mine = {f"{s['table']}.md" for s in summaries} | {"README.md"}
    others = sorted(p.name for p in out.glob("*.md") if p.name not in mine)
    if others:
        lines += ["", "Other reports: " + ", ".join(f"[{o}]({o})" for o in others)]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    """Exit 0, or 2 when a registry file is bad (the other tables of ``--all`` are still reported)."""
    p = argparse.ArgumentParser(prog="python -m runners.report", description=__doc__.split("\n")[0])
    p.add_argument("table", nargs="?", help="registry/X.toml")
    p.add_argument("--all", action="store_true", help="every registry/*.toml, and the index README.md")
    p.add_argument("--format", default="md", choices=["md", "json", "csv"])
    p.add_argument("--out", type=Path, help="output folder (default $KDQAT_RESULTS or results/)")
    args = p.parse_args(argv)
    if bool(args.all) == bool(args.table):
        p.error("give one registry file or --all")
    from runners.registry import RegistryError
    paths = sorted((records.REPO / "registry").glob("*.toml")) if args.all else [Path(args.table)]
    out = args.out or records.results_dir()
    summaries, code = [], 0
    for path in paths:
        try:
            s = report(path, out, args.format)
        except RegistryError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
            continue
        summaries.append(s)
        print(f"{s['table']}: {out / (s['table'] + '.md')}", file=sys.stderr)
        if args.format != "md" and not args.all:
            sys.stdout.write(s["text"] + ("" if s["text"].endswith("\n") else "\n"))
    if args.all:
        print(f"index: {index(summaries, out)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
