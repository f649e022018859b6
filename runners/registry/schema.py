"""The TOML schema of a registry table (pydantic v2, ``extra="forbid"`` everywhere).

A table file::

    [table]            id, title, paper, table, source, caption, kind ("encoder"|"decoder"), notes
    [defaults]         Settings inherited by every cell (model, task, method, params, quant, seeds,
                       train, teacher, protocol)
    [models.NAME]      optional table-local model entries (same keys as kdqat.models.CATALOGUE)
    [[rows]]           id, label, role ("teacher"|"qat"|"ptq"|"approx", default "qat") + Settings
    [[columns]]        id, label, train_size (optional, for step counts) + Settings
    [[cells]]          row, column, skip + Settings: overrides of one cell
    [published]        "row.column" = {mean, std, metric, n, note} or a list of those (one per metric)
    [published_avg]    "row" = number or {value, metric, note}: the AVG column as published

``resources`` (any level: defaults, row, column, cell) says what a job asks the executor for
(GPUs, CPUs, memory, hours, device plan); it is not part of the job config, so it never changes a
job hash. A teacher job takes the resources of the teacher (role "teacher") row's cell when the
table has one, else those of ``defaults`` < column.

Settings merge defaults < row < column < cell; ``train``, ``teacher``, ``protocol``, ``params`` and
``quant`` merge key by key (see ``runners.registry.table``). ``quant`` is a preset name or a table
``{preset = "...", bits = 4, ...}`` of ``kdqat.quant`` overrides. Identifiers are
``[A-Za-z0-9][A-Za-z0-9_.+-]*`` (no "/", which separates the parts of a cell address).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeFloat,
                      NonNegativeInt, PositiveFloat, PositiveInt, StringConstraints)

from kdqat.protocol import Protocol

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")]


def _check_seeds(seeds: list[int]) -> list[int]:
    if not seeds:
        raise ValueError("seeds must not be empty")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ValueError(f"duplicate seed(s) {dup}")
    return seeds


Seeds = Annotated[list[NonNegativeInt], AfterValidator(_check_seeds)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableMeta(Strict):
    """Identity and provenance of the published table."""
    id: Ident
    title: str
    paper: str
    table: str
    source: str
    caption: str = ""
    kind: Literal["encoder", "decoder"]
    notes: list[str] = []


class TrainConfig(Strict):
    """Optimisation settings (SPEC §6.1, §7.2-7.3). Unset fields inherit; batch_size, max_len and
    eval_interval fall back to the task presets (SPEC §1.2); max_steps caps the step count;
    max_train_examples / max_dev_examples cut the data (demo and smoke tables)."""
    lr: PositiveFloat | None = None
    epochs: PositiveInt | None = None
    optimizer: Literal["bertadam", "adamw"] | None = None
    warmup: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    weight_decay: NonNegativeFloat | None = None
    max_grad_norm: PositiveFloat | None = None
    batch_size: PositiveInt | None = None
    max_len: PositiveInt | None = None
    eval_interval: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    checkpoint_every: NonNegativeInt | None = None
    max_train_examples: PositiveInt | None = None
    max_dev_examples: PositiveInt | None = None


class TeacherConfig(TrainConfig):
    """Full-precision fine-tune of the teacher (SPEC §1.3, §6.5, §7.1): train settings plus its own
    seed and which checkpoint is kept ("last": HF run_glue; "best": TSLD's best-PPL epoch)."""
    seed: NonNegativeInt | None = None
    selection: Literal["last", "best"] | None = None


def _quant_table(v: Any) -> Any:
    return {"preset": v} if isinstance(v, str) else v


class QuantOverride(Strict):
    """A ``kdqat.quant`` preset and field overrides (validated by ``kdqat.quant.resolve_spec``).
    Granularity, conv1d_rows and act_clip are protocol switches, not quant overrides."""
    preset: str | None = None
    method: str | None = None
    bits: int | None = None
    group_size: int | None = None
    threshold: PositiveFloat | None = None
    clip: PositiveFloat | None = None
    ste: str | None = None
    init_scale: PositiveFloat | None = None
    act_bits: int | None = None
    linear_act: bool | None = None


class Resources(Strict):
    """What one job asks the executor for (``runners.executors``); merged key by key, the most
    specific level wins (no row/column conflict error: resources never change results' identity).
    ``gpus``: devices per job (with ``device_plan = "ddp"`` / ``"fsdp"`` on CPU: gloo processes);
    ``device_plan``: "single" (one device), "ddp" (data parallel over ``gpus``, ``kdqat.distributed``),
    "fsdp" (FSDP2: student and teacher sharded over ``gpus``, same module)."""
    gpus: NonNegativeInt | None = None
    cpus: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    hours: PositiveFloat | None = None
    device_plan: Literal["single", "ddp", "fsdp"] | None = None


class Settings(Strict):
    """What a cell inherits; every level (defaults, row, column, cell) may set any of it."""
    model: str | None = None
    task: str | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    quant: Annotated[QuantOverride, BeforeValidator(_quant_table)] | None = None
    seeds: Seeds | None = None
    train: TrainConfig | None = None
    teacher: TeacherConfig | None = None
    protocol: Protocol | None = None
    resources: Resources | None = None


class Row(Settings):
    id: Ident
    label: str
    role: Literal["teacher", "qat", "ptq", "approx"] = "qat"


class Column(Settings):
    id: Ident
    label: str
    train_size: PositiveInt | None = None


class CellOverride(Settings):
    row: str
    column: str
    skip: bool = False


class ModelEntry(Strict):
    """A table-local model entry, same keys as ``kdqat.models.CATALOGUE`` values."""
    hub: str | None = None
    family: str
    available: bool = True
    note: str = ""
    config: dict[str, Any] | None = None
    asset: str | None = None
    params_b: NonNegativeFloat | None = None


class PublishedValue(Strict):
    """One published number: mean (± std over ``n`` runs where known) of one metric. ``metric``
    "score" = the task's reported metric (SPEC §6.4); decoder tables name it ("acc", "ppl")."""
    mean: float
    std: NonNegativeFloat | None = None
    metric: str = "score"
    n: PositiveInt | None = None
    note: str = ""


class PublishedAvg(Strict):
    value: float
    metric: str = "score"
    note: str = ""


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, dict) else v


def _as_avg(v: Any) -> Any:
    return {"value": v} if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class TableFile(Strict):
    """The whole file."""
    table: TableMeta
    defaults: Settings = Settings()
    models: dict[str, ModelEntry] = {}
    rows: Annotated[list[Row], Field(min_length=1)]
    columns: Annotated[list[Column], Field(min_length=1)]
    cells: list[CellOverride] = []
    published: dict[str, Annotated[list[PublishedValue], BeforeValidator(_as_list)]] = {}
    published_avg: dict[str, Annotated[list[PublishedAvg], BeforeValidator(_as_list),
                                       BeforeValidator(_as_avg)]] = {}
