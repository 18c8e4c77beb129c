"""Plans checked on the board before fine-tuning, as NetAdapt measures its proposals: the planned
structure is compiled whole and timed beside the dense model (its latency does not depend on the
weights), and while it misses the budget as measured (or lands far under it), the plan's predicted
latency scaled by goal / measured (pooled over the rounds) is the next target and the method plans
again. The dense model is the same in every round, so a round whose dense timing is far above the
fastest one is timed again. Every model timed goes to the device's model table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Generic, TypeVar

from torch import nn

from ..endtoend import ModelCase
from ..registry import Device
from ..schedules import policy_of_rows
from .groups import PruneError
from .validate import side_by_side

Planned = TypeVar("Planned")

STEADY = 1.1
"""A round whose dense model timed above this multiple of the fastest dense timing is timed again."""


@dataclass(frozen=True)
class Round:
    """One checked plan: the predicted target it was planned for, its predicted and measured
    latency, the dense model's measured latency beside it, the budget as measured (``goal_ms``) and
    how many times the pair was timed (the fastest of each counts)."""

    target_ms: float
    predicted_ms: float
    dense_ms: float
    measured_ms: float
    goal_ms: float
    timings: int = 1

    @property
    def met(self) -> bool:
        return self.measured_ms <= self.goal_ms


@dataclass
class Checked(Generic[Planned]):
    """The plan chosen after the rounds, and every round."""

    planned: Planned
    rounds: list[Round]
    chosen: int

    def record(self, device: str) -> dict:
        return {
            "device": device,
            "chosen": self.chosen,
            "met": self.rounds[self.chosen].met,
            "rounds": [asdict(r) for r in self.rounds],
        }


def correct(
    plan_at: Callable[[float], Planned],
    predicted_ms: Callable[[Planned], float],
    measure: Callable[[Planned], tuple[float, float]],
    target: float,
    goal: Callable[[float], float],
    rounds: int,
    tolerance: float = 0.05,
) -> Checked[Planned]:
    """Plan at ``target`` (predicted ms), measure (dense ms, planned ms) and re-plan until a plan
    lands within ``tolerance`` under the goal (``goal(dense_ms)``, in measured ms), ``rounds``
    plans were timed, or a corrected target is out of the method's reach. Each round proposes
    ``predicted * goal / measured`` (its plan's own prediction, which sits under the target where
    latency steps, scaled by how far the board ran from it); the next target is the geometric
    mean of every round's proposal (one noisy timing moves it less than when the last round alone
    decides), or, once a target
    that met and one that missed bracket the goal and that figure falls outside them, their
    midpoint (latency is a staircase in the channel counts). The chosen plan is the one that met
    its goal closest (it keeps the most channels), else the one that missed it least; each plan is
    judged against its own round's goal, which the dense model timed beside it sets. A round whose
    dense timing is far above the fastest of all rounds (a slow spell, see ``STEADY``) is timed
    again before it counts, and so is a plan that lands within the tolerance before it is kept: one
    slow timing of the dense model sets a goal too loose."""
    if rounds < 1:
        raise PruneError(f"board rounds: {rounds} must be at least 1")
    tried: list[tuple[Planned, Round]] = []
    for _ in range(rounds):
        try:
            planned = plan_at(target)
        except PruneError:
            if not tried:
                raise
            break  # the corrected target is out of the method's reach: choose among the plans timed
        dense_ms, measured_ms = measure(planned)
        tried.append((planned, Round(target, predicted_ms(planned), dense_ms, measured_ms, goal(dense_ms))))
        tried = _steadied(tried, measure, goal)
        if _landed(tried[-1][1], tolerance) and tried[-1][1].timings == 1:
            tried[-1] = (tried[-1][0], _timed_again(*tried[-1], measure, goal))
        if _landed(tried[-1][1], tolerance):
            break
        target = math.exp(statistics.fmean(math.log(r.predicted_ms * r.goal_ms / r.measured_ms) for _, r in tried))
        met_at = max((r.target_ms for _, r in tried if r.met), default=0.0)
        missed_at = min((r.target_ms for _, r in tried if not r.met), default=float("inf"))
        if met_at and missed_at < float("inf") and not met_at < target < missed_at:
            target = (met_at + missed_at) / 2
    share = [r.measured_ms / r.goal_ms for _, r in tried]
    met = [i for i, (_, r) in enumerate(tried) if r.met]
    chosen = max(met, key=share.__getitem__) if met else min(range(len(tried)), key=share.__getitem__)
    return Checked(tried[chosen][0], [r for _, r in tried], chosen)


def _steadied(
    tried: list[tuple[Planned, Round]],
    measure: Callable[[Planned], tuple[float, float]],
    goal: Callable[[float], float],
) -> list[tuple[Planned, Round]]:
    """``tried`` with each round timed once only whose dense timing is above ``STEADY`` times the
    fastest of all rounds timed again, keeping the fastest of each model's timings."""
    fastest = min(r.dense_ms for _, r in tried)
    return [
        (planned, _timed_again(planned, r, measure, goal) if r.timings == 1 and r.dense_ms > STEADY * fastest else r)
        for planned, r in tried
    ]


def _timed_again(
    planned: Planned, r: Round, measure: Callable[[Planned], tuple[float, float]], goal: Callable[[float], float]
) -> Round:
    """``r`` with its plan and the dense model timed once more, the fastest of each model's timings kept."""
    dense_ms, measured_ms = (min(pair) for pair in zip(measure(planned), (r.dense_ms, r.measured_ms)))
    return replace(r, dense_ms=dense_ms, measured_ms=measured_ms, goal_ms=goal(dense_ms), timings=r.timings + 1)


def _landed(r: Round, tolerance: float) -> bool:
    """Whether ``r``'s plan met its goal within ``tolerance`` under it."""
    return (1 - tolerance) * r.goal_ms <= r.measured_ms <= r.goal_ms


@dataclass
class Board:
    """Where plans are timed: the device, its tables folder and build cache, and how many plans
    at most one pruning run times (``rounds``)."""

    device: Device
    tables_dir: Path
    cache_dir: Path
    rounds: int = 3
    tolerance: float = 0.05

    def time_plan(
        self, dense: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], name: str, method: str, schedule: str
    ) -> tuple[float, float]:
        """The measured latency (ms) of ``dense`` and of a plan's ``pruned`` copy of it, timed side by
        side (each the fastest of the device's passes), as models ``NAME:dense`` and ``NAME:METHOD-plan``."""
        cases = [
            ModelCase(f"{name}:dense", dense, input_shape),
            ModelCase(f"{name}:{method}-plan", pruned.eval(), input_shape),
        ]
        timed = side_by_side(self.device, cases, policy_of_rows(schedule), self.tables_dir, self.cache_dir)
        for row in timed:
            if row["status"] != "ok":
                raise PruneError(f"board check on {self.device.name}: {row['model']}: {row['stage']}: {row['error']}")
        return timed[0]["latency_ms"], timed[1]["latency_ms"]
