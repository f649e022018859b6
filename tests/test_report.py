"""``runners.report`` on fixed result records: mean and sample std (ddof 1) by hand, Welch's t-test with
scipy's formula written out, every status (within, outside, no spread, no published, not run, failed,
unavailable, metric missing), best vs last selection, published-average mismatches (SPEC §12.12),
markdown validity, the PNG, the JSON/CSV fields, ``--all`` and its index. No training: the records
are written by hand into a tmp results dir (``KDQAT_RESULTS``); job hashes come from ``load_table``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
from scipy import stats

from runners import records, report
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"table", "row", "column", "metric", "n", "mean", "std", "published_mean", "published_std", "status"}

ENCODER = """
[table]
id = "rep"
title = "Report test | tiny"
paper = "test"
table = "T"
source = "test"
kind = "encoder"
notes = ["a note"]

[defaults]
model = "tiny-bert"
task = "toy_cls"
quant = "kim2022_w2a8"
seeds = [1, 2, 3]
train = { lr = 1e-3, epochs = 1, optimizer = "bertadam", warmup = 0.1, weight_decay = 0.01 }
teacher = { lr = 1e-3, epochs = 1, optimizer = "adamw", warmup = 0.0, weight_decay = 0.0 }

[models.ghost-bert]
family = "bert"
available = false
note = "ghost-bert is not public"

[[rows]]
id = "full_prec"
label = "Full-Prec"
role = "teacher"

[[rows]]
id = "map"
label = "Map"
method = "map"

[[rows]]
id = "output"
label = "Output"
method = "output"

[[rows]]
id = "ghost"
label = "Ghost"
method = "map"
model = "ghost-bert"

[[columns]]
id = "a"
label = "A"

[[columns]]
id = "b"
label = "B"
protocol = { selection = "last" }

[published]
"full_prec.a" = { mean = 85.0 }
"full_prec.b" = { mean = 80.0 }
"map.a" = { mean = 70.0, std = 1.0 }
"map.b" = { mean = 60.0, std = 0.5 }
"output.a" = { mean = 50.0, std = 2.0 }
"output.b" = { mean = 55.0, std = 1.0 }
"ghost.a" = { mean = 40.0, std = 1.0 }

[published_avg]
"full_prec" = 83.0
"map" = 65.0
"""

# (row, column) -> {seed: (score = best report, score_last)}; the teacher job serves both columns.
SCORES = {("full_prec", "a"): {42: (86.0, 84.5)},
          ("map", "a"): {1: (70.5, 10.0), 2: (71.5, 10.0), 3: (69.0, 10.0)},
          ("map", "b"): {1: (60.1, 65.0), 2: (59.9, 65.5), 3: (60.0, 66.0)},
          ("output", "a"): {1: (49.0, 0.0), 2: (52.0, 0.0)}}          # seed 3 missing
FAILED = {("output", "b"): (1, 2, 3)}                                 # every seed failed


def write_result(root: Path, job, metrics_best: dict, metrics_last: dict, score: float, score_last: float) -> None:
    rec = {"job": job.hash, "cells": job.cells, "seed": job.seed, "role": job.role, "status": "done",
           "device": "cpu", "metrics": {"best": metrics_best, "last": metrics_last}, "score": score,
           "score_last": score_last, "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
           "git_commit": "abc123", "wall_s": 10.0, "finished": "2026-01-01T00:00:00"}
    records.write_json_atomic(records.job_dir(job.hash, root) / "result.json", rec)


def write_failure(root: Path, job, status: str = "failed") -> None:
    records.write_json_atomic(records.job_dir(job.hash, root) / "failure.json",
                              {"job": job.hash, "status": status, "error": f"RuntimeError: boom {status}",
                               "wall_s": 2.0})


def job_of(table, row: str, column: str, seed: int):
    addr = f"{table.id}/{row}/{column}"
    return next(j for j in table.jobs() if addr in j.cells and j.seed == seed)


@pytest.fixture()
def fixed(tmp_path, monkeypatch):
    """(table path, results root) with the records of SCORES / FAILED written."""
    root = tmp_path / "results"
    monkeypatch.setenv("KDQAT_RESULTS", str(root))
    path = tmp_path / "rep.toml"
    path.write_text(ENCODER)
    table = load_table(path)
    for (row, col), seeds in SCORES.items():
        for seed, (best, last) in seeds.items():
            write_result(root, job_of(table, row, col, seed), {"acc": best, "report": best},
                         {"acc": last, "report": last}, best, last)
    for (row, col), seeds in FAILED.items():
        for seed in seeds:
            write_failure(root, job_of(table, row, col, seed))
    return path, root


def hand_mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))      # sample std, ddof 1


def hand_welch_p(m1, s1, n1, m2, s2, n2):
    v1, v2 = s1 ** 2 / n1, s2 ** 2 / n2
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))        # Welch–Satterthwaite
    return 2 * stats.t.sf(abs(t), df)


def md_tables(text: str) -> list[list[list[str]]]:
    """Every GitHub table of ``text`` as rows of cells; asserts header separator and equal widths."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            assert len(block) >= 2 and re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", block[1]), block[:2]
            rows = [re.split(r"(?<!\\)\|", b.strip())[1:-1] for b in block]
            assert all(b.rstrip().endswith("|") for b in block)
            assert len({len(r) for r in rows}) == 1, f"ragged table: {[len(r) for r in rows]}"
            out.append([r for i, r in enumerate(rows) if i != 1])
            block = []
    return out


def by_key(entries):
    return {(e["row"], e["column"], e["metric"]): e for e in entries}


def test_hand_computed_cells_and_statuses(fixed):
    path, root = fixed
    es = by_key(report.build(load_table(path), root))
    assert len(es) == 8 and all(k[2] == "score" for k in es)
    # map/a: best scores, Welch against 70 ± 1 (n = 3 = the cell's seeds)
    e = es[("map", "a", "score")]
    m, s = hand_mean_std([70.5, 71.5, 69.0])
    assert (m, s) == pytest.approx((70.33333333333333, 1.2583057392117916), abs=1e-12)
    assert (e["n"], e["mean"], e["std"], e["published_n"]) == (3, pytest.approx(m), pytest.approx(s), 3)
    p = hand_welch_p(m, s, 3, 70.0, 1.0, 3)
    assert p == pytest.approx(0.7387, abs=1e-3)
    assert e["p_value"] == pytest.approx(p, rel=1e-9) and e["status"] == "within"
    assert e["diff"] == pytest.approx(m - 70.0) and e["selection"] == "best"
    # map/b: selection "last" reads score_last (the best scores would be within)
    e = es[("map", "b", "score")]
    assert e["selection"] == "last" and e["per_seed"] == {"1": 65.0, "2": 65.5, "3": 66.0}
    assert (e["mean"], e["std"]) == (pytest.approx(65.5), pytest.approx(0.5))
    p = hand_welch_p(65.5, 0.5, 3, 60.0, 0.5, 3)
    assert p < 0.05 and e["p_value"] == pytest.approx(p, rel=1e-9) and e["status"] == "outside"
    # output/a: seed 3 missing -> n = 2 of 3
    e = es[("output", "a", "score")]
    m, s = hand_mean_std([49.0, 52.0])
    assert (e["n"], e["seeds"], e["mean"], e["std"]) == (2, 3, 50.5, pytest.approx(s))
    assert s == pytest.approx(2.1213203435596424)
    assert e["p_value"] == pytest.approx(hand_welch_p(m, s, 2, 50.0, 2.0, 3), rel=1e-9) and e["status"] == "within"
    # failed, unavailable (model marked unavailable), teacher shared by both columns, selection last
    e = es[("output", "b", "score")]
    assert (e["status"], e["failed"], e["n"], e["mean"]) == ("failed", 3, 0, None)
    assert [es[("ghost", c, "score")]["status"] for c in "ab"] == ["unavailable", "unavailable"]
    for col, pub in (("a", 85.0), ("b", 80.0)):
        e = es[("full_prec", col, "score")]
        assert (e["n"], e["mean"], e["std"], e["status"], e["p_value"]) == (1, 84.5, None, "no spread", None)
        assert e["diff"] == pytest.approx(84.5 - pub) and e["selection"] == "last"
    # an "unavailable" failure record (data missing) turns a failed cell unavailable
    write_failure(root, job_of(load_table(path), "output", "b", 1), status="unavailable")
    assert by_key(report.build(load_table(path), root))[("output", "b", "score")]["status"] == "unavailable"


def test_compare_branches_by_hand():
    # one-sample t-test when only ours has a spread: t = Δ / (s / √n), df n − 1
    st, p = report.compare(71.0, 0.5, 4, 70.0, None, 1)
    assert p == pytest.approx(2 * stats.t.sf(1.0 / (0.5 / 2), 3)) and p == pytest.approx(0.0280, abs=1e-4)
    assert st == "outside"
    # prediction test when only the paper has one: t = Δ / (s_pub √(1 + 1/n_pub)), df n_pub − 1
    st, p = report.compare(71.0, None, 1, 70.0, 1.0, 3)
    assert p == pytest.approx(2 * stats.t.sf(1.0 / math.sqrt(4 / 3), 2)) and st == "within"
    assert report.compare(71.0, None, 1, 70.0, None, 1) == ("no spread", None)
    assert report.compare(70.0, 0.0, 3, 70.0, 0.0, 3) == ("within", 1.0)
    assert report.compare(70.1, 0.0, 3, 70.0, 0.0, 3) == ("outside", 0.0)
    assert report.compare(math.inf, None, 1, 70.0, 1.0, 3) == ("outside", None)
    assert report.compare(70.0, 1.0, 3, None, None, None) == ("no published", None)
    assert report.mean_std([1.0]) == (1.0, None) and report.mean_std([]) == (None, None)


def test_markdown_averages_and_provenance(fixed, tmp_path):
    path, root = fixed
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out)]) == 0
    text = (out / "rep.md").read_text()
    main, avgs, rows, cost = md_tables(text)
    assert main[0] == [" Method ", " A<br>(acc) ", " B<br>(acc) ", " AVG ours / paper "]
    assert [r[0].strip() for r in main[1:]] == ["Full-Prec", "Map", "Output", "Ghost"]
    m, s = hand_mean_std([70.5, 71.5, 69.0])
    p = hand_welch_p(m, s, 3, 70.0, 1.0, 3)
    assert main[2][1].strip() == f"**70.33 ± 1.26** (n=3)<br>paper 70.00 ± 1.00<br>Δ +0.33 · within (p={p:.2g})"
    assert main[3][1].strip().startswith("**50.50 ± 2.12** (n=2/3)<br>paper 50.00 ± 2.00<br>Δ +0.50 · within")
    assert main[3][2].strip() == "failed (3 failed)<br>paper 55.00 ± 1.00"
    assert main[4][1].strip() == "unavailable<br>paper 40.00 ± 1.00"
    assert main[4][2].strip() == "unavailable<br>no published number"
    p_out = hand_welch_p(65.5, 0.5, 3, 60.0, 0.5, 3)
    assert main[2][2].strip() == \
        f"**65.50 ± 0.50** (n=3)<br>paper 60.00 ± 0.50<br>Δ +5.50 · outside (p={p_out:.2g})"
    assert main[2][3].strip() == f"{(m + 65.5) / 2:.2f} / 65.00"
    assert "Report test \\| tiny" in text.splitlines()[0]
    # published averages: Full-Prec cells average to 82.5, not the published 83.0 (flagged); Map adds up
    avg = {r[0].strip(): r for r in avgs[1:]}
    assert avg["Full-Prec"][3].strip() == "82.500 ⚠ mismatch (SPEC §12.12)"
    assert avg["Full-Prec"][4].strip() == "84.50"
    assert avg["Map"][3].strip() == "65.000" and "⚠" not in avg["Map"][3]
    # provenance: 9 records × 10 s, 3 failures × 2 s; commit, device, versions, protocol, notes
    assert "Compute: 0.025 h in finished jobs (+0.002 h in failed ones)." in text
    assert "Git commits: abc123. Devices: cpu." in text and "Versions: python 3.11.7, torch 2.13.0+cpu" in text
    assert "Jobs (cell × seed, teachers included): 9 done, 3 failed, 7 unavailable, 1 not run, of 20." in text
    assert "- `rep/map/b`: `selection=last`" in text and "`act_clip=2.5`" in text
    assert "Unavailable (ghost/a, ghost/b): ghost-bert is not public" in text
    assert "Failed (output/b): RuntimeError: boom failed" in text and "- a note" in text
    assert [r[8].strip() for r in rows[1:]] == ["last", "best", "best", "best"]
    assert rows[1][5].strip() == "optimizer=adamw, lr=0.001, epochs=1, batch_size=16"
    # cost per cell (runners.estimate): finished jobs count their own 10 s; the 4 jobs without a
    # record (output/a seed 3, output/b) are priced by the FLOP model, ghost is unavailable (0)
    c = {r[0].strip(): [x.strip() for x in r[1:]] for r in cost[1:]}
    one, three = f"{10 / 3600:.3g}", f"{30 / 3600:.3g}"
    assert c["Full-Prec"] == [one, "–", one] and c["Map"] == [three, three, f"{60 / 3600:.3g}"]
    assert c["Ghost"] == ["0", "0", "0"]
    assert "Sources (jobs): done 9, flops 4, unavailable 7 (`runners.estimate`)." in text


def test_png_opens_and_is_not_uniform(fixed, tmp_path):
    from matplotlib.image import imread
    path, root = fixed
    report.report(path, tmp_path / "out", root=root)
    img = imread(tmp_path / "out" / "rep.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    assert img[..., :3].std() > 0.05 and len({tuple(px) for px in img[::7, ::7, :3].reshape(-1, 3).tolist()}) > 20


def test_json_and_csv(fixed, tmp_path, capsys):
    path, _ = fixed
    assert report.main([str(path), "--format", "json", "--out", str(tmp_path / "o")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((tmp_path / "o" / "rep.json").read_text()) and len(got) == 8
    assert all(REQUIRED <= set(e) for e in got)
    e = next(x for x in got if (x["row"], x["column"]) == ("map", "b"))
    assert (e["table"], e["metric"], e["n"], e["published_mean"], e["published_std"], e["status"]) == \
        ("rep", "score", 3, 60.0, 0.5, "outside")
    assert report.main([str(path), "--format", "csv", "--out", str(tmp_path / "o")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8 and REQUIRED <= set(rows[0])
    assert {r["status"] for r in rows} == {"within", "outside", "no spread", "failed", "unavailable"}


DECODER = """
[table]
id = "rep_dec"
title = "Decoder report test"
paper = "test"
table = "T2"
source = "test"
kind = "decoder"

[defaults]
model = "tiny-opt"
quant = "tsld_w2a16"
seeds = [1, 2]
train = { lr = 1e-3, epochs = 1, optimizer = "adamw", warmup = 0.0, weight_decay = 0.0 }
teacher = { lr = 1e-3, epochs = 1, optimizer = "adamw", warmup = 0.0, weight_decay = 0.0, selection = "best" }

[[rows]]
id = "fp"
label = "FP"
role = "teacher"

[[rows]]
id = "logit"
label = "Logit"
method = "logit"

[[columns]]
id = "rte"
label = "RTE"
task = "lm_rte"

[[columns]]
id = "sst2"
label = "SST-2"
task = "lm_sst2"

[[columns]]
id = "cola"
label = "CoLA"
task = "lm_cola"

[[columns]]
id = "lm"
label = "LM"
task = "toy_lm"

[published]
"fp.rte" = [{ metric = "acc", mean = 65.0 }, { metric = "ppl", mean = 11.0 }]
"logit.rte" = [{ metric = "acc", mean = 60.0, std = 1.0 }, { metric = "ppl", mean = 12.0, std = 0.2 }]
"logit.sst2" = [{ metric = "acc", mean = 90.0, std = 0.5 }, { metric = "ppl", mean = 5.0, std = 0.1 }]
"logit.cola" = [{ metric = "mcc", mean = 50.0, std = 2.0 }, { metric = "ppl", mean = 1.5, std = 0.1 }]
"logit.lm" = { metric = "ppl", mean = 20.0 }
"""


def test_decoder_table_one_entry_and_block_per_metric(tmp_path, monkeypatch, capsys):
    root = tmp_path / "results"
    monkeypatch.setenv("KDQAT_RESULTS", str(root))
    path = tmp_path / "rep_dec.toml"
    path.write_text(DECODER)
    table = load_table(path)
    for seed, acc, ppl in ((1, 61.0, 12.5), (2, 63.0, 12.1)):
        best = {"acc": acc, "ppl": ppl, "report": acc}
        write_result(root, job_of(table, "logit", "rte", seed), best, {"acc": 0.0, "ppl": 99.0}, acc, 0.0)
        write_result(root, job_of(table, "logit", "sst2", seed), {"ppl": 5.0}, {"ppl": 5.0}, 0.0, 0.0)
    write_result(root, job_of(table, "fp", "rte", 42), {"acc": 66.0, "ppl": 10.5}, {}, 66.0, 66.0)
    assert report.main([str(path), "--format", "json", "--out", str(tmp_path / "o")]) == 0
    es = by_key(json.loads(capsys.readouterr().out))
    assert len(es) == 14         # 6 cells x {acc or mcc, ppl} + 2 x ppl; fp/* take their column's metrics
    assert es[("fp", "cola", "mcc")]["status"] == "not run" and es[("logit", "cola", "ppl")]["status"] == "not run"
    assert (es[("logit", "rte", "acc")]["mean"], es[("logit", "rte", "acc")]["std"]) == \
        (62.0, pytest.approx(math.sqrt(2.0)))
    assert (es[("logit", "rte", "ppl")]["mean"], es[("logit", "rte", "ppl")]["std"]) == \
        (pytest.approx(12.3), pytest.approx(math.sqrt(0.08)))
    assert es[("logit", "rte", "ppl")]["p_value"] == pytest.approx(
        hand_welch_p(12.3, math.sqrt(0.08), 2, 12.0, 0.2, 2), rel=1e-9)
    assert es[("fp", "rte", "ppl")]["mean"] == 10.5 and es[("fp", "rte", "ppl")]["status"] == "no spread"
    assert es[("logit", "sst2", "acc")]["status"] == "metric missing"
    assert es[("logit", "sst2", "ppl")]["status"] == "within" and es[("fp", "sst2", "acc")]["status"] == "not run"
    text = (tmp_path / "o" / "rep_dec.md").read_text()
    assert "## Metric: acc / mcc" in text and "## Metric: ppl" in text      # block k = k-th metric of a cell
    acc, ppl = md_tables(text)[:2]
    assert [c.strip() for c in acc[0][1:4]] == ["RTE<br>(acc)", "SST-2<br>(acc)", "CoLA<br>(mcc)"]
    assert len(acc[0]) == 5 and [c.strip() for c in ppl[0][1:5]] == \
        ["RTE<br>(ppl)", "SST-2<br>(ppl)", "CoLA<br>(ppl)", "LM<br>(ppl)"]
    # blocks: same direction and never in one cell -> shared (acc, mcc); ppl never joins acc
    assert report._blocks([["ppl"], ["acc", "ppl"]]) == {"ppl": 0, "acc": 1}
    assert report._blocks([["mcc", "ppl"], ["acc", "ppl"], ["ppl"]]) == {"mcc": 0, "acc": 0, "ppl": 1}
    assert report._blocks([["acc"], ["ppl"]]) == {"acc": 0, "ppl": 1}
    assert ppl[2][1].strip().startswith("**12.30 ± 0.28** (n=2)<br>paper 12.00 ± 0.20")


def test_never_run_table_reports_not_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "empty"))
    out = tmp_path / "o"
    assert report.main([str(REPO / "registry" / "glue_bert_large.toml"), "--format", "json", "--out", str(out)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 40 and all(e["published_mean"] is not None for e in got)
    assert {e["status"] for e in got} == {"not run"} and all(e["n"] == 0 and e["mean"] is None for e in got)
    text = (out / "glue_bert_large.md").read_text()
    assert text.count("not run<br>paper") == 40
    avg = {r[0].strip(): r for r in md_tables(text)[1][1:]}
    assert "⚠ mismatch" in avg["Baseline (TernaryBERT)"][3] and "⚠" not in avg["Map"][3]
    assert (out / "glue_bert_large.png").stat().st_size > 10_000


def test_index_coverage(fixed, tmp_path):
    path, root = fixed
    out = tmp_path / "o"
    s = report.report(path, out, root=root)
    (out / "extra_report.md").write_text("# other\n")
    text = report.index([s], out).read_text()
    table = md_tables(text)[0]
    assert [c.strip() for c in table[1]] == ["`rep`", "Report test \\| tiny", "5 / 8", "5 / 7", "2", "1", "3",
                                            "[rep.md](rep.md)"]
    assert "Other reports: [extra_report.md](extra_report.md)" in text


def test_all_regenerates_every_table_and_index(tmp_path, monkeypatch):
    """Every registry table; plotting (seconds per table, checked above) is replaced by a stub."""
    monkeypatch.setenv("KDQAT_RESULTS", str(tmp_path / "empty"))
    plotted = []
    monkeypatch.setattr(report, "plot", lambda table, entries, path: plotted.append(table.id) or path.write_bytes(b""))
    out = tmp_path / "o"
    assert report.main(["--all", "--out", str(out)]) == 0
    ids = [load_table(p).id for p in sorted((REPO / "registry").glob("*.toml"))]
    rows = md_tables((out / "README.md").read_text())[0][1:]
    assert [r[0].strip() for r in rows] == [f"`{i}`" for i in ids] and plotted == ids
    assert all(md_tables((out / f"{i}.md").read_text()) and (out / f"{i}.png").exists() for i in ids)
    big = next(r for r in rows if r[0].strip() == "`glue_bert_large`")
    assert [c.strip() for c in big[2:7]] == ["0 / 40", "0 / 40", "0", "0", "0"]


def test_bad_registry_file_exits_2_naming_it(tmp_path, capsys):
    bad = REPO / "tests" / "data" / "bad_registry" / "bad_role.toml"
    assert report.main([str(bad), "--out", str(tmp_path)]) == 2
    assert "bad_role.toml" in capsys.readouterr().err and not list(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        report.main(["--out", str(tmp_path)])                     # neither a table nor --all
