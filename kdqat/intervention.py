"""Teacher Intervention schedules and the two-step plan (SPEC §5.2, §5.3; quirks §9.11, §9.12).

The substitutions themselves (TI-M / TI-C / TI-O, with their stop-gradients, SPEC §5.1) are
applied by ``kdqat.capture.Capture.intervene``; this module only says WHICH mode acts at a step.
Modes are the strings "M", "C", "O" (the official MI, CI, OI) or None (no intervention).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SCHEDULES = ("GRAD", "INVERTED", "STOCHASTIC", "M", "C", "O", "none")


def ti_mode(schedule: str, step: int, s: int, rng: random.Random | None = None) -> str | None:
    """Intervention mode at 0-based optimizer ``step`` of a step-1 run of length ``s`` (SPEC §5.2).

    GRAD (TI-G): "O" while step < s/6, then "C" while step < s/3, then "M" (O -> C -> M; s=60:
    steps 0-9 O, 10-19 C, 20-59 M). INVERTED: "M" while step < s/3, "C" while step < 2s/3, then
    "O". STOCHASTIC: a uniform choice among O, C, M at each call, drawn from ``rng`` (a
    ``random.Random`` the caller seeds; required). "M"/"C"/"O": constant. "none": None.
    The thresholds are compared as real numbers, as the official ``step < s/6``.
    """
    if schedule == "GRAD":
        return "O" if step < s / 6 else ("C" if step < s / 3 else "M")
    if schedule == "INVERTED":
        return "M" if step < s / 3 else ("C" if step < 2 * s / 3 else "O")
    if schedule == "STOCHASTIC":
        if rng is None:
            raise ValueError("ti_mode('STOCHASTIC') needs rng=random.Random(seed) for reproducibility")
        return rng.choice(("O", "C", "M"))
    if schedule in ("M", "C", "O"):
        return schedule
    if schedule == "none":
        return None
    raise ValueError(f"unknown TI schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def step1_length(task: str, model_kind: str = "base") -> int:
    """Step-1 length s: 120 iterations for CoLA or the 4-layer tiny BERT, 60 otherwise (SPEC §5.2)."""
    return 120 if task.lower() == "cola" or model_kind.lower() == "tiny-4l" else 60


@dataclass(frozen=True)
class TwoStepPlan:
    """TI two-step training over the TernaryBERT budget N = ``total`` optimizer steps (SPEC §5.3).

    Global steps 0..s-1 are step 1 (intervention by ``schedule``, optimizer schedule over s steps);
    steps s..N-1 are step 2 (no intervention, a FRESH optimizer with t_total = N - s, warmup 10% of
    N - s), so the total budget equals the baseline's N. The official loop then runs s more steps
    at learning rate 0 (§9.12); they cannot change the weights and are not part of the plan.
    """

    s: int
    total: int
    schedule: str = "GRAD"

    def __post_init__(self):
        if not 0 < self.s < self.total:
            raise ValueError(f"TwoStepPlan needs 0 < s < total, got s={self.s}, total={self.total}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown TI schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")

    @property
    def step2_steps(self) -> int:
        """Optimizer steps of step 2 (its t_total): N - s."""
        return self.total - self.s

    def phase(self, step: int, rng: random.Random | None = None) -> tuple[str, str | None]:
        """("step1", mode) for global step < s, ("step2", None) for s <= step < N."""
        if not 0 <= step < self.total:
            raise ValueError(f"step {step} outside the plan's 0..{self.total - 1}")
        if step < self.s:
            return "step1", ti_mode(self.schedule, step, self.s, rng)
        return "step2", None

    def local_step(self, step: int) -> int:
        """Step index inside its own phase (step 2 restarts at 0 with its fresh optimizer)."""
        return step if step < self.s else step - self.s
