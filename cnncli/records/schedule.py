"""Learning-rate schedules: the rate of every optimizer step, from the step number alone.

A schedule is a pure function of the global step, so a resumed run recomputes
exactly the rates an uninterrupted one used, with nothing to store. Schedules
return a factor of the base rate; ``warmup_epochs`` ramps it up linearly first
(for ``onecycle`` the warm-up is the rising phase itself).

``cosine`` and ``onecycle`` are spread over the run's length, so a run resumed
with another ``--epochs`` gets other rates from where it stands on (a finished
run trained longer starts its schedule's descent again from part-way):
:func:`first_change` finds the first step whose rate a new plan changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Plan:
    """What a schedule needs to know about the run."""

    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    step_gamma: float = 0.1

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return min(self.total_steps, round(self.warmup_epochs * self.steps_per_epoch))


def _constant(plan: Plan, step: int) -> float:
    return 1.0


def _step(plan: Plan, step: int) -> float:
    return plan.step_gamma ** (step // plan.steps_per_epoch // plan.step_epochs)


def _cosine(plan: Plan, step: int) -> float:
    # Anneals over the steps after warm-up and reaches 0 one step past the last.
    start, total = plan.warmup_steps, plan.total_steps
    t = (step - start) / max(total - start, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


# PyTorch's OneCycleLR defaults: start at lr/25, peak after 30 % of the run, end at lr/25e4.
_ONECYCLE_PCT = 0.3
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def _onecycle(plan: Plan, step: int) -> float:
    total = plan.total_steps
    rise = plan.warmup_steps or max(1, round(_ONECYCLE_PCT * total))
    low, end = 1.0 / _ONECYCLE_DIV, 1.0 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
    if step < rise:
        t = step / rise
        return low + (1.0 - low) * 0.5 * (1.0 - math.cos(math.pi * t))
    t = min((step - rise) / max(total - 1 - rise, 1), 1.0)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))


SCHEDULES: dict[str, Callable[[Plan, int], float]] = {
    "constant": _constant,
    "step": _step,
    "cosine": _cosine,
    "onecycle": _onecycle,
}


def learning_rate(name: str, plan: Plan, step: int) -> float:
    """The rate of global step ``step`` (0-based) under schedule ``name``."""
    factor = SCHEDULES[name](plan, step)
    warm = plan.warmup_steps
    if name != "onecycle" and step < warm:
        factor *= (step + 1) / (warm + 1)
    return plan.lr * factor


def first_change(name: str, planned: Plan, new: Plan, start: int) -> tuple[int, float, float] | None:
    """The first step from ``start`` on whose rate under schedule ``name`` differs between ``planned`` and
    ``new`` (two plans of one run, of other lengths), with its rate under each; None when the steps keep their
    rates (``constant``, ``step``: rates of the step alone).

    Rates are compared where a schedule's can part (``start``, each epoch's first step, the ends of warm-up
    and of each plan), and step by step back from the first of those that differs, so that a long run is not
    walked through step by step."""
    spe = planned.steps_per_epoch
    end = max(planned.total_steps, new.total_steps)
    marks = {start, planned.warmup_steps, new.warmup_steps, planned.total_steps - 1, new.total_steps - 1}
    marks.update(range(-(-start // spe) * spe, end, spe))
    agreed = start - 1
    for mark in sorted(m for m in marks if start <= m < end):
        if learning_rate(name, planned, mark) != learning_rate(name, new, mark):
            for step in range(agreed + 1, mark + 1):
                before, after = learning_rate(name, planned, step), learning_rate(name, new, step)
                if before != after:
                    return step, before, after
        agreed = mark
    return None
