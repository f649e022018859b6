"""The TSLD registry tables equal the published source and the released hyper-parameters.

* Every number of the four tab-separated tables of ``../shared/papers/tsld_slides.md`` (Table 1 PTB
  PPL; the OPT-2.7B reasoning table; the GPT-Neo / OPT-6.7B / LLaMA-7B table; the OPT-1.3B NLU
  table), parsed here from the slide text, equals the registry's published mean (and ± std), and the
  registry holds no published number the slides do not have. The CoLA "ACC" column is stored as
  metric ``mcc`` (SPEC §12.11).
* Per-model learning rates and epochs of every teacher and QAT cell equal SPEC §7.3's table
  (parsed from ``../shared/SPEC.md``), with "GPT-2 0.6B*" being the 0.8B model.
* ``--dry-run`` of each table lists its jobs (teachers first) and the report can be built.
A missing ``shared/`` folder is a failure, not a skip.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from runners import run as run_cli
from runners.registry import load_table

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SLIDES = SHARED / "papers" / "tsld_slides.md"
TABLES = {"Precision\tQuantization Method": "tsld_ptb", "QAT KD Method\tPIQA": "tsld_reasoning",
          "Model\tGPT-Neo-1.3B": "tsld_reasoning_large", "Precision\tQAT KD Method\tCoLA": "tsld_nlu_opt"}
JOBS = {"tsld_ptb": (72, 8), "tsld_reasoning": (20, 5), "tsld_reasoning_large": (12, 4), "tsld_nlu_opt": (84, 4)}
SPEC_MODELS = {"GPT-2 0.1B": "gpt2-0.1b", "GPT-2 0.3B": "gpt2-0.3b", "GPT-2 0.6B*": "gpt2-0.8b",
               "GPT-2 1.5B": "gpt2-1.5b", "OPT 0.1B": "opt-0.1b", "OPT 1.3B": "opt-1.3b", "OPT 2.7B": "opt-2.7b",
               "OPT 6.7B": "opt-6.7b", "GPT-Neo 1.3B": "gpt-neo-1.3b", "LLaMA 7B": "llama-7b"}


def _need(path: Path) -> str:
    if not path.is_file():
        pytest.fail(f"the published source {path} is missing: the shared/ folder must sit beside the repository")
    return path.read_text(encoding="utf-8")


def _ffill(cells: list[str]) -> list[str]:
    out, last = [], ""
    for c in cells:
        last = c.strip() or last
        out.append(last)
    return out


def _num(cell: str) -> tuple[float, float | None]:
    """'<b>56.33</b> ±0.98' -> (56.33, 0.98); '17.62 (↓)' -> (17.62, None)."""
    nums = re.findall(r"\d+\.\d+", re.sub(r"<[^>]+>", "", cell))
    assert 1 <= len(nums) <= 2, cell
    return float(nums[0]), float(nums[1]) if len(nums) == 2 else None


def _label(*parts: str) -> str:
    return " ".join(re.sub(r"\s*\[\d+\]", "", p).strip() for p in parts if p.strip())


def parse_slides(text: str) -> dict[str, dict[tuple[str, str, str], tuple[float, float | None]]]:
    """{table id: {(row label, column label, metric): (mean, std)}} from the slides' TSV blocks."""
    blocks, cur = [], []
    for line in text.splitlines() + [""]:
        if "\t" in line:
            cur.append(line.split("\t"))
        elif cur:
            blocks.append(cur)
            cur = []
    out = {}
    for block in blocks:
        key = next((k for k in TABLES if "\t".join(block[0]).startswith(k)), None)
        if key is None:
            continue
        tid, cells = TABLES[key], {}
        top, sub = _ffill(block[0]), block[1]
        if tid == "tsld_ptb":          # precision | PTQ/QAT | method | 8 models (family row + size row)
            cols = [f"{top[i]} {sub[i]}" for i in range(3, 11)]
            prec = qm = ""
            for r in block[2:]:
                prec, qm = r[0].strip() or prec, r[1].strip() or qm
                for c, v in zip(cols, r[3:11]):
                    cells[(_label(prec, qm, r[2]), c, "ppl")] = _num(v)
        elif tid == "tsld_reasoning":  # method | (ACC, PPL) per task
            for r in block[2:]:
                for i in range(1, 11):
                    cells[(_label(r[0]), top[i], "acc" if "ACC" in sub[i] else "ppl")] = _num(r[i])
        elif tid == "tsld_reasoning_large":  # model row, then task row "PTB (PPL)" / "GSM8K (ACC/PPL)"
            tasks = _ffill(sub)
            for r in block[2:]:
                for i in range(1, len(r)):
                    task, metrics = re.match(r"(\S+) \((.+)\)", tasks[i]).groups()
                    k = 0                                # k-th column of this model x task group
                    while (top[i - k - 1], tasks[i - k - 1]) == (top[i], tasks[i]):
                        k += 1
                    cells[(_label(r[0]), f"{top[i]} {task}", metrics.split("/")[k].lower())] = _num(r[i])
        else:                          # precision | method | (ACC, PPL) per task; CoLA ACC is MCC
            prec = ""
            for r in block[2:]:
                prec = r[0].strip() or prec
                for i in range(2, 10):
                    metric = "ppl" if i % 2 else ("mcc" if top[i] == "CoLA" else "acc")
                    cells[(_label(prec, r[1]), top[i], metric)] = _num(r[i])
        out[tid] = cells
    return out


@pytest.fixture(scope="module")
def slides():
    return parse_slides(_need(SLIDES))


def test_slides_hold_the_four_tables(slides):
    assert {t: len(c) for t, c in slides.items()} == \
        {"tsld_ptb": 72, "tsld_reasoning": 40, "tsld_reasoning_large": 18, "tsld_nlu_opt": 72}
    assert slides["tsld_ptb"][("W2A16 QAT TSLD", "OPT 1.3B", "ppl")] == (14.60, None)
    assert slides["tsld_reasoning_large"][("TSLD", "OPT-6.7B GSM8K", "ppl")] == (2.14, None)
    assert slides["tsld_nlu_opt"][("W4A16 TSLD", "CoLA", "mcc")] == (56.33, 0.98)


@pytest.mark.parametrize("tid", list(JOBS))
def test_registry_numbers_equal_slides(slides, tid):
    table = load_table(REPO / "registry" / f"{tid}.toml")
    rows, cols = {r.label: r.id for r in table.rows}, {c.label: c.id for c in table.columns}
    want = {(rows[r], cols[c], m): v for (r, c, m), v in slides[tid].items()}
    got = {k: (v.mean, v.std) for k, v in table.published.items()}
    assert got == want
    assert table.meta.source == "papers/tsld_slides.md" and table.kind == "decoder"


def parse_spec_hparams(text: str) -> dict[str, dict[str, float]]:
    """{catalogue model: {"teacher_lr", "teacher_epochs", "qat_lr", "qat_epochs"}} from SPEC §7.3."""
    sec = text.split("### 7.3")[1].split("###")[0]
    lines = [ln for ln in sec.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    keys = {"LR (FP fine-tune)": "teacher_lr", "Epochs (FP)": "teacher_epochs", "LR (QAT)": "qat_lr",
            "Epochs (QAT)": "qat_epochs"}
    out = {SPEC_MODELS[h]: {} for h in header}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for h, v in zip(header, cells[1:]):
            out[SPEC_MODELS[h]][keys[cells[0]]] = float(v)
    return out


def test_per_model_hyper_parameters_follow_spec_7_3():
    hp = parse_spec_hparams(_need(SHARED / "SPEC.md"))
    assert hp["llama-7b"] == {"teacher_lr": 5e-5, "teacher_epochs": 1, "qat_lr": 7e-5, "qat_epochs": 5}
    seen = set()
    for tid in JOBS:
        for cell in load_table(REPO / "registry" / f"{tid}.toml").cells():
            model = cell.teacher["model"]["name"]
            want = hp[model]
            t = cell.teacher["train"]
            assert (t["lr"], t["epochs"], t["batch_size"], t["optimizer"], t["warmup"], t["selection"]) == \
                (want["teacher_lr"], want["teacher_epochs"], 4, "adamw", 0.0, "best"), cell.address
            if cell.role == "qat":
                q = cell.config["train"]
                assert (q["lr"], q["epochs"], q["batch_size"], q["max_len"]) == \
                    (want["qat_lr"], want["qat_epochs"], 4, 512), cell.address
                w4 = cell.config["quant"] == "tsld_w4a16"
                assert cell.config["protocol"]["granularity"] == ("row" if w4 else "tensor"), cell.address
            if cell.role == "ptq":
                assert cell.config["params"]["group_size"] == -1 and cell.config["params"]["bits"] == 4
            assert cell.config["protocol"]["precision"] == "fp32"
            seen.add(model)
    assert seen == set(hp)


@pytest.mark.parametrize("tid", list(JOBS))
def test_dry_run_lists_jobs_and_report_builds(tid, capsys, tmp_path):
    from runners import report
    path = REPO / "registry" / f"{tid}.toml"
    assert run_cli.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    n, teachers = JOBS[tid]
    assert f"{n} jobs ({teachers} teachers)" in out
    roles = [ln.split()[1] for ln in out.splitlines() if re.match(r"^[0-9a-f]{12}  ", ln)]
    assert len(roles) == n and roles[:teachers] == ["teacher"] * teachers and "teacher" not in roles[teachers:]
    table = load_table(path)
    entries = report.build(table, root=tmp_path)
    assert {e["status"] for e in entries} <= {"not run", "no published"}
    assert len([e for e in entries if e["published_mean"] is not None]) == len(table.published)
