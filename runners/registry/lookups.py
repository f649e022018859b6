"""Name lookups the registry validates against; each imports its ``kdqat`` owner lazily.

Every function raises ``ValueError`` whose message names the bad value (and the valid ones); the
caller turns it into a ``RegistryError`` naming file, cell and field.

* models: ``kdqat.models.CATALOGUE`` (+ a table's own ``[models]``), families and table kinds;
* tasks: ``kdqat.data.tasks.TASKS``; the task kinds each table kind accepts;
* KD methods: ``kdqat.kd.methods`` (``validate_method``, ``build_method(...).params`` for defaults);
* TI schedules (method "ti", param ``schedule``): ``kdqat.intervention.SCHEDULES``;
* quantization presets and overrides: ``kdqat.quant.resolve_spec``;
* PTQ methods (role "ptq"): ``PTQ_METHODS`` below (``kdqat.ptq`` exposes functions, not names);
* approximation methods (role "approx"): ``kdqat.recipes.approx`` (``DEFAULTS``, ``validate_params``).
"""
from __future__ import annotations

import importlib
import re

ENCODER_FAMILIES = ("bert", "roberta")
DECODER_FAMILIES = ("gpt2", "opt", "llama", "gpt_neo")
TASK_KINDS = {"encoder": ("classification", "regression"), "decoder": ("lm", "lm_cls", "instruction")}
# SPEC §7.8 / §8.3: OPTQ (GPTQ) and AWQ, 4-bit asymmetric per channel; their parameters.
PTQ_METHODS = {"optq": ("bits", "group_size", "calib_examples"), "awq": ("bits", "group_size", "calib_examples")}
# Used only while kdqat.intervention does not exist yet (SPEC §5.2: none = no step 1).
_FALLBACK_SCHEDULES = ("none", "M", "C", "O", "GRAD", "INVERTED", "STOCHASTIC")
_PRESENTATION = ("note", "params_b")   # catalogue keys left out of job configs (and hashes)


def _model_catalogue() -> dict:
    """``kdqat.models.CATALOGUE``, or nothing while that module does not exist."""
    try:
        return dict(importlib.import_module("kdqat.models").CATALOGUE)
    except ImportError:
        return {}


def model_entry(name: str, kind: str, extra: dict) -> dict:
    """The job-config model entry ``{"name", "hub", "family", "available", "config", ...}``.

    ``extra``: the table's ``[models]`` (wins over the catalogue). Checks the family against the
    table kind (encoder: BERT/RoBERTa; decoder: GPT-2/OPT/LLaMA/GPT-Neo).
    """
    catalogue = {**_model_catalogue(), **extra}
    if name not in catalogue:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(catalogue)) or '(none)'}")
    entry = dict(catalogue[name])
    family = entry.get("family")
    ok = ENCODER_FAMILIES if kind == "encoder" else DECODER_FAMILIES
    if family not in ENCODER_FAMILIES + DECODER_FAMILIES:
        raise ValueError(f"model {name!r}: unknown model family {family!r}; "
                         f"valid: {', '.join(ENCODER_FAMILIES + DECODER_FAMILIES)}")
    if family not in ok:
        raise ValueError(f"model {name!r} of family {family!r} cannot be used in {kind} tables "
                         f"(valid families: {', '.join(ok)})")
    return {"name": name, **{k: v for k, v in entry.items() if k not in _PRESENTATION}}


def model_note(name: str, extra: dict) -> str:
    return str({**_model_catalogue(), **extra}.get(name, {}).get("note", ""))


def task_spec(name: str, kind: str):
    """The ``TaskSpec`` called ``name``; its kind must suit the table kind."""
    from kdqat.data.tasks import TASKS
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    spec = TASKS[name]
    if spec.kind not in TASK_KINDS[kind]:
        raise ValueError(f"task {name!r} of kind {spec.kind!r} cannot be used in {kind} tables "
                         f"(valid task kinds: {', '.join(TASK_KINDS[kind])})")
    return spec


def _schedules() -> tuple[str, ...]:
    try:
        return tuple(importlib.import_module("kdqat.intervention").SCHEDULES)
    except (ImportError, AttributeError):
        return _FALLBACK_SCHEDULES


def kd_method(name: str, kind: str) -> None:
    """Validate a KD method name and its family against the table kind."""
    from kdqat.kd import methods as m
    if name not in m.method_names():
        raise ValueError(f"unknown KD method {name!r}; valid: {', '.join(m.method_names())}")
    family = m.METHODS[name].family
    if family not in (kind, "any"):
        raise ValueError(f"KD method {name!r} is a {family} method and cannot be used in {kind} tables")


def kd_params(name: str, params: dict) -> dict:
    """Validate the parameters of KD method ``name``; return them with defaults filled in.

    Method "ti" takes ``schedule`` (TI-M/TI-O/TI-G..., SPEC §5.2; "none" = no intervention), which
    the recipe hands to ``kdqat.intervention``; the other parameters go to ``kdqat.kd.methods``.
    """
    from kdqat.kd import methods as m
    params = dict(params)
    extra = {}
    if name == "ti":
        schedule = params.pop("schedule", "none")
        if schedule not in _schedules():
            raise ValueError(f"KD method 'ti': parameter 'schedule' must be one of "
                             f"{', '.join(_schedules())}, got {schedule!r}")
        extra["schedule"] = schedule
    m.validate_method(name, params)
    return {**m.build_method(name, params).params, **extra}


def ptq_method(name: str) -> None:
    if name not in PTQ_METHODS:
        raise ValueError(f"unknown PTQ method {name!r}; valid: {', '.join(PTQ_METHODS)}")


def ptq_params(name: str, params: dict) -> dict:
    bad = sorted(set(params) - set(PTQ_METHODS[name]))
    if bad:
        raise ValueError(f"PTQ method {name!r}: unknown parameter {bad[0]!r}; valid: {', '.join(PTQ_METHODS[name])}")
    return dict(params)


def approx_method(name: str, kind: str) -> None:
    """An approx row's method ("nnlut" | "ibert"); encoder tables only (BERT-family non-linearities)."""
    from kdqat.recipes.approx import DEFAULTS
    if name not in DEFAULTS:
        raise ValueError(f"unknown approximation method {name!r}; valid: {', '.join(DEFAULTS)}")
    if kind != "encoder":
        raise ValueError(f"approximation method {name!r} is for encoder tables only (exact GELU, softmax, "
                         f"LayerNorm of BERT-family models)")


def approx_params(name: str, params: dict) -> dict:
    from kdqat.recipes.approx import validate_params
    return validate_params(name, params)


def quant(preset: str | None, overrides: dict) -> None:
    """Validate a preset name and its overrides (bit-widths etc.) with ``kdqat.quant``."""
    if preset is None:
        raise ValueError("no quantization preset (set quant = \"<preset>\" or quant.preset)")
    from kdqat.quant import PRESETS, resolve_spec
    if preset not in PRESETS:
        raise ValueError(f"unknown quantization preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
    resolve_spec(preset, **overrides)


def param_field(message: str, default: str = "params") -> str:
    """``params.<name>`` when a validator's message names the offending parameter."""
    hit = re.search(r"parameter '([^']+)'", message)
    return f"{default}.{hit.group(1)}" if hit else default
