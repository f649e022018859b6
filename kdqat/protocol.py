"""Named protocol switches: every hidden choice of the official code that moves numbers (SPEC §9, §12).

One pydantic model, :class:`Protocol`; every field's default is what the official code (or, where the
sources are silent, the suite's decision of SPEC §12) does, and every field carries a one-line
description citing the SPEC item. A result records the protocol it ran under, so an ablation is one
registry line (``[defaults.protocol]`` / a row / a cell: ``protocol = {act_clip = 4.0}``).

Each switch applies to one table kind (``"encoder"``, ``"decoder"`` or ``"both"``); a job config holds
only the switches of its kind (:meth:`Protocol.resolved`), so adding a decoder switch never changes an
encoder job's hash. Switches marked ``teacher`` also shape the full-precision teacher fine-tune and go
into the teacher's config (:meth:`Protocol.teacher_view`). Imports nothing of the project (pydantic only).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

KINDS = ("encoder", "decoder")


def _switch(default, kind: str, doc: str, teacher: bool = False):
    return Field(default, description=doc, json_schema_extra={"kind": kind, "teacher": teacher})


class Protocol(BaseModel):
    """Every switch; unknown names and bad values are validation errors (extra="forbid")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- encoder: quantization (SPEC §3.1, §9.1-2) ----
    act_clip: PositiveFloat = _switch(
        2.5, "encoder",
        "fixed ±clip before the 8-bit min-max activation quantizer (§3.1, §9.1)")
    attn_internal_quant: bool = _switch(
        True, "encoder",
        "8-bit Q, K, V and attention probabilities inside attention, unconditional in P1/P2 (§3.1, §9.2)")
    # ---- encoder: losses (SPEC §4.1, §9.4-5, §9.8, §12.2); names shared with kdqat.kd.methods ----
    soft_ce: Literal["sum_classes", "mean"] = _switch(
        "sum_classes", "encoder",
        "logit soft-CE: sum over classes, mean over batch (P1/P2) | mean over batch×classes (TernaryBERT) "
        "(§4.1(i), §9.4)")
    output_site: Literal["post_ln", "pre_ln"] = _switch(
        "post_ln", "encoder",
        "attention-output loss on LN(W_O·ctx+b+X) (blk[1], official runs) | W_O·ctx+b (§4.1(v), §12.2)")
    gt_reduction: Literal["sum", "mean"] = _switch(
        "sum", "encoder",
        "encoder GT cross-entropy: sum over batch (P1) | mean (P2) (§4.1(vii), §9.8)")
    gt_regression: Literal["teacher", "labels"] = _switch(
        "teacher", "encoder",
        "STS-B 'GT' loss is MSE to the teacher logits (official quirk) | to the labels (§4.1(vii), §9.8)")
    # ---- encoder: training and evaluation (SPEC §1.2, §6, §9.6-7, §12.4-5, §12.14) ----
    eval_protocol: Literal["p1", "p2", "ternarybert"] = _switch(
        "p1", "encoder",
        "which code's per-task dev-evaluation interval is used when train.eval_interval is unset (§1.2)")
    eval_at: Literal["t_total-1", "end"] = _switch(
        "t_total-1", "encoder",
        "the extra 'last' evaluation at global_step == t_total-1 (official off-by-one) | after the last "
        "step (§6.4, §9.7)")
    t_total: Literal["ceil", "floor"] = _switch(
        "ceil", "encoder",
        "schedule length ceil(#train/bs)·epochs (P1/P2) | floor (TernaryBERT) (§6.1)")
    pair_selection: Literal["acc", "acc_f1"] = _switch(
        "acc", "encoder",
        "MRPC/QQP best-dev checkpoint chosen on acc although (acc+F1)/2 is reported | on (acc+F1)/2 "
        "(§6.4, §9.6)")
    data_augmentation: bool = _switch(
        False, "encoder",
        "TinyBERT data augmentation of the training set; off in the P1/P2 scripts (§6.3, §9.10, §12.14)")
    # ---- encoder: teacher intervention (SPEC §5, §9.11-14, §12.13) ----
    ti_step1_len: PositiveInt | None = _switch(
        None, "encoder",
        "TI step-1 length in steps; unset = official 60, 120 for CoLA (§5.2, §12.13)")
    ti_detach: bool = _switch(
        True, "encoder",
        "stop-gradient on the Q/K (and V for TI-O/TI-C) inputs during intervention (§5.1, §9.14)")
    ti_step2_t_total: Literal["n_minus_s", "n"] = _switch(
        "n_minus_s", "encoder",
        "step-2 schedule length N−s while the loop runs N steps (official) | N (§5.3, §9.12)")
    # ---- decoder (SPEC §2.4, §4.2, §7, §9.20-28, §12.6-9) ----
    precision: Literal["fp32", "bf16"] = _switch(
        "fp32", "decoder",
        "training/inference dtype; the released scripts use bf16, the README says fp32 matches the "
        "paper (§9.22, §12.7)", teacher=True)
    granularity: Literal["tensor", "row"] = _switch(
        "tensor", "decoder",
        "ternary weight scale per tensor (Table-1 caption) | per output row (released script default) "
        "(§9.23, §12.6)")
    conv1d_rows: Literal["output", "official"] = _switch(
        "output", "decoder",
        "GPT-2 Conv1D per-channel scale per output channel | per [in] row as the official code "
        "(§2.4, §9.23)")
    tsld_tau: PositiveFloat = _switch(
        10.0, "decoder",
        "TSLD token-scale softmax temperature (code τ=10; the paper formula has none) (§4.2, §9.21)")
    tsld_batch: Literal["sum", "mean"] = _switch(
        "sum", "decoder",
        "TSLD term summed over the batch (official) | averaged (§4.2, §9.20, §12.8)")
    tsld_variant: Literal["both", "up", "down"] = _switch(
        "both", "decoder",
        "TSLD token scaling both ways | only up-scaling max(w,1/N) | only down-scaling min(w,1/N) (§8.3)")
    l2l_attention: Literal["scores", "probs"] = _switch(
        "scores", "decoder",
        "L2L attention term on pre-softmax scores (official, patched HF) | on probabilities (stock HF) "
        "(§4.2, §9.26)")
    piqa_split: Literal["validation", "test"] = _switch(
        "validation", "decoder",
        "PIQA evaluation split; its test labels are −1 (§7.5, §9.27, §12.9)", teacher=True)
    # ---- both ----
    selection: Literal["best", "last"] = _switch(
        "best", "both",
        "reported score = best dev evaluation over training (official) | the last one (§6.4, §7.4, §12.5)")

    @classmethod
    def switches(cls, kind: str | None = None, teacher: bool | None = None) -> list[str]:
        """Names of the switches that apply to ``kind`` (None: all), optionally only teacher ones."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown table kind {kind!r}; valid: {', '.join(KINDS)}")
        out = []
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra
            if kind is not None and extra["kind"] not in (kind, "both"):
                continue
            if teacher is not None and extra["teacher"] != teacher:
                continue
            out.append(name)
        return out

    @classmethod
    def describe(cls, name: str) -> str:
        """The one-line description of switch ``name`` (ValueError listing the valid ones)."""
        if name not in cls.model_fields:
            raise ValueError(f"unknown protocol switch {name!r}; valid: {', '.join(cls.model_fields)}")
        return cls.model_fields[name].description

    def check_kind(self, kind: str) -> None:
        """ValueError naming any switch set explicitly that does not apply to ``kind`` tables."""
        allowed = set(self.switches(kind))
        wrong = [n for n in self.model_fields_set if n not in allowed]
        if wrong:
            raise ValueError(f"protocol switch {wrong[0]!r} does not apply to {kind} tables")

    def resolved(self, kind: str) -> dict:
        """Every switch of ``kind`` with its value (defaults filled in): the job config's protocol."""
        return {n: getattr(self, n) for n in self.switches(kind)}

    def teacher_view(self, kind: str) -> dict:
        """The switches that shape the full-precision teacher fine-tune of a ``kind`` table."""
        return {n: getattr(self, n) for n in self.switches(kind, teacher=True)}

    def overrides(self) -> dict:
        """Only the switches set explicitly (for inheritance: defaults < row < column < cell)."""
        return self.model_dump(exclude_unset=True)
