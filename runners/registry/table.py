"""Tables, cells and jobs: inheritance, cell addressing, expansion into hashed jobs (DESIGN.md §3).

Inheritance: a cell's settings are ``defaults < row < column < [[cells]] override``. Scalars
(model, task, method, seeds) take the most specific value; ``train``, ``teacher``, ``protocol``,
``params`` and ``quant`` merge key by key. A key set differently by the row and by the column is an
error unless a ``[[cells]]`` override settles it.

A cell resolves to a config (the job config without ``seed``):

* role "qat": kind, role, model (catalogue entry + name, without presentation keys), task, method,
  params (defaults filled in), quant (preset name), quant_overrides, train (task presets filled in:
  batch_size, max_len, eval_interval; SPEC §1.2), protocol (every switch of the table kind,
  ``kdqat.protocol``), teacher (the teacher job's hash);
* role "ptq": kind, role, model, task, method, params, protocol, teacher;
* role "approx" (encoder only: NN-LUT / I-BERT non-linearities in the FP teacher,
  ``kdqat.recipes.approx``): the same keys as "ptq"; 0 steps;
* role "teacher" (the Full-Prec row): the teacher config itself: kind, role, model, task, train
  (the ``teacher`` settings + task presets + selection), protocol (teacher switches only), seed.

Every QAT/PTQ cell depends on the teacher of its model × task × teacher settings; identical teacher
configs have identical hashes, so one teacher serves every table that needs it. A job = cell × seed
(a teacher: one job, its own seed); ``hash`` = sha256 of the canonical JSON of the config, first 12
hex digits (``canonical_json``: sorted keys, no whitespace, integral floats written as integers so
that ``gamma = 1`` and ``gamma = 1.0`` are one job).

``resources`` (GPUs, CPUs, memory, hours, device plan) ride beside the config on ``Cell`` and
``Job``, never inside it: they do not change hashes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from kdqat.protocol import Protocol
from runners.registry import lookups
from runners.registry.errors import RegistryError
from runners.registry.schema import Column, PublishedAvg, PublishedValue, Row, Settings, TableFile

SCALARS = ("model", "task", "method", "seeds")
MERGED = ("params", "quant", "train", "teacher", "protocol")
REQUIRED_TRAIN = ("lr", "epochs", "optimizer", "warmup", "weight_decay")
TEACHER_SEED = 42
NOT_FOR_TEACHER_ROWS = ("method", "params", "quant", "train", "seeds")
NOT_FOR_PTQ_ROWS = ("quant", "train")


def _canon(x):
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {str(k): _canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    return x


def canonical_json(config: dict) -> str:
    return json.dumps(_canon(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: dict) -> str:
    """sha256[:12] of ``canonical_json(config)``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cell:
    """One cell of a table: its resolved config (no seed), seeds and published numbers per metric."""
    table: str
    row: str
    column: str
    role: str
    row_label: str
    column_label: str
    config: dict
    teacher: dict          # the teacher config (== config for a teacher cell)
    seeds: tuple[int, ...]
    steps: int | None
    teacher_steps: int | None
    published: dict[str, PublishedValue]
    unavailable: str | None
    resources: dict = field(default_factory=dict)          # schema.Resources fields that are set
    teacher_resources: dict = field(default_factory=dict)  # the resources of this cell's teacher job

    @property
    def address(self) -> str:
        return f"{self.table}/{self.row}/{self.column}"


@dataclass
class Job:
    """A cell × seed (or a teacher). ``cells``: addresses that use it; ``teacher``: the Job it needs;
    ``steps``: optimizer steps when computable without data; ``unavailable``: why it cannot run here."""
    hash: str
    config: dict
    cells: list[str] = field(default_factory=list)
    teacher: "Job | None" = None
    steps: int | None = None
    unavailable: str | None = None
    resources: dict = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.config["role"]

    @property
    def seed(self) -> int:
        return self.config["seed"]


def _layer(s: Settings | None) -> dict:
    """The fields a level sets explicitly, merged fields as flat dicts."""
    if s is None:
        return {}
    out = {k: getattr(s, k) for k in SCALARS if getattr(s, k) is not None}
    if s.params is not None:
        out["params"] = dict(s.params)
    if s.protocol is not None:
        out["protocol"] = s.protocol.overrides()
    for k in ("quant", "train", "teacher"):
        if getattr(s, k) is not None:
            out[k] = getattr(s, k).model_dump(exclude_none=True)
    return out


def _resources(*levels: Settings | None) -> dict:
    """The set ``resources`` fields of ``levels`` (least to most specific), merged key by key."""
    out: dict = {}
    for s in levels:
        if s is not None and s.resources is not None:
            out.update(s.resources.model_dump(exclude_none=True))
    return out


class Table:
    """A loaded, fully validated table. ``cells()`` and ``jobs()`` never raise for bad entries:
    every cell is resolved at load time (only ``jobs`` filters can still be wrong)."""

    def __init__(self, path: Path, spec: TableFile, max_steps: int | None = None):
        self.path, self.spec, self.meta = Path(path), spec, spec.table
        self.id, self.kind = spec.table.id, spec.table.kind
        self.rows: list[Row] = list(spec.rows)
        self.columns: list[Column] = list(spec.columns)
        self.max_steps = max_steps
        self._models = {k: v.model_dump() for k, v in spec.models.items()}
        self._check_entries()
        self.published: dict[tuple[str, str, str], PublishedValue] = self._published()
        self.published_avg: dict[tuple[str, str], PublishedAvg] = self._published_avg()
        self._cells = {(r.id, c.id): self._resolve(r, c) for r in self.rows for c in self.columns
                       if not (o := self._overrides.get((r.id, c.id))) or not o.skip}

    # ---------------------------------------------------------------- errors and entry checks
    def _err(self, cell: str, field: str, msg: str) -> RegistryError:
        return RegistryError(str(self.path), cell, field, msg)

    def _check_entries(self) -> None:
        for what, items in (("rows", self.rows), ("columns", self.columns)):
            seen = set()
            for it in items:
                if it.id in seen:
                    raise self._err(f"{what}[{it.id}]", "id", f"duplicate {what[:-1]} id {it.id!r}")
                seen.add(it.id)
        rows, cols = {r.id: r for r in self.rows}, {c.id for c in self.columns}
        self._overrides = {}
        for o in self.spec.cells:
            name = f"cells[{o.row}/{o.column}]"
            if o.row not in rows:
                raise self._err(name, "row", f"override for a missing row {o.row!r}; rows: {', '.join(rows)}")
            if o.column not in cols:
                raise self._err(name, "column", f"override for a missing column {o.column!r}; "
                                f"columns: {', '.join(cols)}")
            if (o.row, o.column) in self._overrides:
                raise self._err(name, "-", "duplicate [[cells]] override for this cell")
            self._overrides[(o.row, o.column)] = o
        levels = [("defaults", self.spec.defaults)] + [(f"rows[{r.id}]", r) for r in self.rows] + \
            [(f"columns[{c.id}]", c) for c in self.columns] + \
            [(f"cells[{o.row}/{o.column}]", o) for o in self.spec.cells]
        for name, s in levels:
            if s.protocol is not None:
                try:
                    s.protocol.check_kind(self.kind)
                except ValueError as e:
                    bad = next(n for n in s.protocol.model_fields_set if n not in Protocol.switches(self.kind))
                    raise self._err(name, f"protocol.{bad}", str(e)) from None
            role = s.role if isinstance(s, Row) else rows[s.row].role if name.startswith("cells[") else None
            for f in NOT_FOR_TEACHER_ROWS if role == "teacher" else NOT_FOR_PTQ_ROWS if role in ("ptq", "approx") \
                    else ():
                if getattr(s, f) is not None:
                    raise self._err(name, f, "not allowed on a teacher (Full-Prec) row: it is the teacher job "
                                    "itself; set its training in `teacher`" if role == "teacher" else
                                    "not allowed on a ptq row: post-training quantization has no training "
                                    "and takes its bit-width from params" if role == "ptq" else
                                    "not allowed on an approx row: it evaluates the teacher with swapped "
                                    "non-linearities, no training and no quantization")

    def _split_key(self, key: str, avg: bool) -> tuple[str, str | None]:
        rows, cols = {r.id for r in self.rows}, {c.id for c in self.columns}
        if avg:
            if key not in rows:
                raise self._err(f"published_avg[{key}]", "-", f"no row {key!r}; rows: {', '.join(sorted(rows))}")
            return key, None
        hits = [(key[:i], key[i + 1:]) for i, ch in enumerate(key) if ch == "."
                if key[:i] in rows and key[i + 1:] in cols]
        if len(hits) != 1:
            raise self._err(f"published[{key}]", "-", "published entry for a cell that does not exist "
                            "(key must be \"row.column\" with an existing row and column)")
        r, c = hits[0]
        o = self._overrides.get((r, c))
        if o is not None and o.skip:
            raise self._err(f"published[{key}]", "-", "published entry for a skipped cell")
        return r, c

    def _published(self) -> dict:
        out = {}
        for key, values in self.spec.published.items():
            r, c = self._split_key(key, avg=False)
            for v in values:
                if (r, c, v.metric) in out:
                    raise self._err(f"published[{key}]", "metric", f"metric {v.metric!r} given twice")
                out[(r, c, v.metric)] = v
        return out

    def _published_avg(self) -> dict:
        out = {}
        for key, values in self.spec.published_avg.items():
            r, _ = self._split_key(key, avg=True)
            for v in values:
                if (r, v.metric) in out:
                    raise self._err(f"published_avg[{key}]", "metric", f"metric {v.metric!r} given twice")
                out[(r, v.metric)] = v
        return out

    # ---------------------------------------------------------------- resolution
    def _merge(self, addr: str, levels: list[tuple[str, dict]]) -> dict:
        """{field: (value, source)} for scalars, {field: {key: (value, source)}} for merged fields."""
        out: dict = {}
        for key in SCALARS + MERGED:
            flat = [(name, {"": d[key]} if key in SCALARS else d[key]) for name, d in levels if key in d]
            merged: dict = {}
            for name, d in flat:
                for k, v in d.items():
                    prev = merged.get(k)
                    if prev and prev[1].startswith("rows[") and name.startswith("columns[") and prev[0] != v:
                        f = key if k == "" else f"{key}.{k}"
                        raise self._err(addr, f, f"set differently in {prev[1]} ({prev[0]!r}) and in {name} "
                                        f"({v!r}); settle it with a [[cells]] override")
                    merged[k] = (v, name)
            out[key] = merged.get("") if key in SCALARS else merged
        return out

    def _lookup(self, addr: str, field: str, fn, *args, source: str | None = None, keys=()):
        """``fn(*args)``; its ValueError becomes a RegistryError on ``field`` (``field.key`` when the
        message names one of ``keys`` or a parameter)."""
        try:
            return fn(*args)
        except ValueError as e:
            msg = str(e)
            named = [k for k in keys if f"{k}=" in msg or f"'{k}'" in msg]
            where = f" (set in {source})" if source else ""
            f = f"{field}.{named[0]}" if named else lookups.param_field(msg, field) if field == "params" else field
            raise self._err(addr, f, f"{msg}{where}") from None

    def _train(self, addr: str, what: str, merged: dict, task, proto: Protocol) -> dict:
        t = {k: v for k, (v, _) in merged.items()}
        for req in REQUIRED_TRAIN:
            if req not in t:
                raise self._err(addr, f"{what}.{req}", "required field is missing (set it in [defaults."
                                f"{what}], the row, the column or a [[cells]] override)")
        t.setdefault("batch_size", task.batch_size)
        t.setdefault("max_len", task.max_len)
        if "eval_interval" not in t:
            try:
                t["eval_interval"] = task.eval_every(proto.eval_protocol, proto.data_augmentation)
            except (ValueError, AttributeError):
                t["eval_interval"] = None   # decoders: once per epoch (SPEC §7.4)
        t.setdefault("max_grad_norm", 1.0)
        t.setdefault("checkpoint_every", 0)
        for k in ("max_steps", "max_train_examples", "max_dev_examples"):
            t.setdefault(k, None)
        if self.max_steps:
            t["max_steps"] = min(t["max_steps"] or self.max_steps, self.max_steps)
        return dict(sorted(t.items()))

    def _steps(self, col: Column, task, train: dict, rule: str) -> int | None:
        n = col.train_size or getattr(task, "train_size", None)
        if not n:
            return None
        if train.get("max_train_examples"):
            n = min(n, train["max_train_examples"])
        per_epoch = math.ceil(n / train["batch_size"]) if rule == "ceil" else n // train["batch_size"]
        total = per_epoch * train["epochs"]
        return min(total, train["max_steps"]) if train.get("max_steps") else total

    def _resolve(self, row: Row, col: Column) -> Cell:
        addr = f"{self.id}/{row.id}/{col.id}"
        over = self._overrides.get((row.id, col.id))
        levels = [("defaults", _layer(self.spec.defaults)), (f"rows[{row.id}]", _layer(row)),
                  (f"columns[{col.id}]", _layer(col))]
        if over is not None:
            levels.append((f"cells[{row.id}/{col.id}]", _layer(over)))
        m = self._merge(addr, levels)
        proto = Protocol(**{k: v for k, (v, _) in m["protocol"].items()})
        for f in ("model", "task"):
            if m[f] is None:
                raise self._err(addr, f, "required field is missing (set it in [defaults], the row, the column "
                                "or a [[cells]] override)")
        entry = self._lookup(addr, "model", lookups.model_entry, m["model"][0], self.kind, self._models,
                             source=m["model"][1])
        task = self._lookup(addr, "task", lookups.task_spec, m["task"][0], self.kind, source=m["task"][1])
        tmerged = dict(m["teacher"])
        tseed = tmerged.pop("seed", (TEACHER_SEED, ""))[0]
        ttrain = self._train(addr, "teacher", tmerged, task, Protocol())
        ttrain.setdefault("selection", "last")
        tcfg = {"kind": self.kind, "role": "teacher", "model": entry, "task": task.name, "train": ttrain,
                "protocol": proto.teacher_view(self.kind), "seed": tseed}
        tsteps = self._steps(col, task, ttrain, "ceil")
        note = None if entry.get("available", True) else (lookups.model_note(m["model"][0], self._models)
                                                          or f"model {m['model'][0]!r} is not available")
        pub = {metric: v for (r, c, metric), v in self.published.items() if (r, c) == (row.id, col.id)}
        trow = next((r for r in self.rows if r.role == "teacher"), None)
        tres = _resources(self.spec.defaults, trow, col, trow and self._overrides.get((trow.id, col.id)))
        base = dict(table=self.id, row=row.id, column=col.id, role=row.role, row_label=row.label,
                    column_label=col.label, teacher=tcfg, teacher_steps=tsteps, published=pub, unavailable=note,
                    resources=_resources(self.spec.defaults, row, col, over), teacher_resources=tres)
        if row.role == "teacher":
            return Cell(config=tcfg, seeds=(tseed,), steps=tsteps, **base)
        if m["method"] is None:
            raise self._err(addr, "method", f"required field is missing for a {row.role} row")
        method, msrc = m["method"]
        params = {k: v for k, (v, _) in m["params"].items()}
        psrc = ", ".join(sorted({s for _, s in m["params"].values()})) or msrc
        if m["seeds"] is None:
            raise self._err(addr, "seeds", "required field is missing")
        seeds = tuple(m["seeds"][0])
        cfg = {"kind": self.kind, "role": row.role, "model": entry, "task": task.name, "method": method}
        if row.role == "approx":
            self._lookup(addr, "method", lookups.approx_method, method, self.kind, source=msrc)
            cfg["params"] = self._lookup(addr, "params", lookups.approx_params, method, params, source=psrc)
            steps = 0
        elif row.role == "ptq":
            self._lookup(addr, "method", lookups.ptq_method, method, source=msrc)
            cfg["params"] = self._lookup(addr, "params", lookups.ptq_params, method, params, source=psrc)
            steps = None
        else:
            self._lookup(addr, "method", lookups.kd_method, method, self.kind, source=msrc)
            cfg["params"] = self._lookup(addr, "params", lookups.kd_params, method, params, source=psrc)
            q = {k: v for k, (v, _) in m["quant"].items()}
            preset = q.pop("preset", None)
            qsrc = ", ".join(sorted({s for _, s in m["quant"].values()})) or None
            self._lookup(addr, "quant", lookups.quant, preset, q, source=qsrc, keys=tuple(q))
            cfg.update(quant=preset, quant_overrides=q,
                       train=self._train(addr, "train", m["train"], task, proto))
            steps = self._steps(col, task, cfg["train"], proto.t_total)
        cfg.update(protocol=proto.resolved(self.kind), teacher=config_hash(tcfg))
        return Cell(config=cfg, seeds=seeds, steps=steps, **base)

    # ---------------------------------------------------------------- public API
    def cells(self) -> list[Cell]:
        """Every (non-skipped) cell, row-major in table order."""
        return list(self._cells.values())

    def cell(self, address: str) -> Cell:
        """The cell ``"table/row/column"`` (or ``"row/column"``); KeyError naming it otherwise."""
        parts = address.split("/")
        if len(parts) == 3 and parts[0] == self.id:
            parts = parts[1:]
        if len(parts) != 2 or tuple(parts) not in self._cells:
            raise KeyError(f"{self.path}: no cell {address!r} in table {self.id!r}")
        return self._cells[tuple(parts)]

    def jobs(self, rows=None, columns=None, seeds=None) -> list[Job]:
        """Jobs of the selected cells, teachers first; identical configs are one job."""
        for what, sel, known in (("rows", rows, [r.id for r in self.rows]),
                                 ("columns", columns, [c.id for c in self.columns])):
            for x in sel or ():
                if x not in known:
                    raise self._err("-", what, f"unknown {what[:-1]} id {x!r}; valid: {', '.join(known)}")
        picked = [c for c in self.cells()
                  if (rows is None or c.row in rows) and (columns is None or c.column in columns)]
        all_seeds = {s for c in picked if c.role != "teacher" for s in c.seeds}
        for s in seeds or ():
            if s not in all_seeds:
                raise self._err("-", "seeds", f"seed {s} is not a seed of the selected cells; "
                                f"valid: {', '.join(map(str, sorted(all_seeds)))}")
        teachers: dict[str, Job] = {}
        others: dict[str, Job] = {}
        for c in picked:
            run = [s for s in c.seeds if seeds is None or s in seeds] if c.role != "teacher" else []
            if c.role != "teacher" and not run:
                continue
            th = config_hash(c.teacher)
            t = teachers.setdefault(th, Job(th, c.teacher, steps=c.teacher_steps, unavailable=c.unavailable,
                                            resources=c.teacher_resources))
            if c.role == "teacher":
                t.cells.append(c.address)
            for s in run:
                cfg = {**c.config, "seed": s}
                h = config_hash(cfg)
                job = others.setdefault(h, Job(h, cfg, teacher=t, steps=c.steps, unavailable=c.unavailable,
                                               resources=c.resources))
                job.cells.append(c.address)
        return list(teachers.values()) + list(others.values())
