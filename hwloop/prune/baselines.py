"""Baselines the latency-aware methods are compared against, on the same groups and importance.

Both round channel counts to multiples of a step, as Torch-Pruning's ``round_to`` does: the
pipeline passes the cost's alignment step (so that a comparison isolates what the cost term
brings) unless told otherwise (``Settings.round_to``; 1 is Torch-Pruning's default, no rounding).
"""

from __future__ import annotations

import math

import torch

from . import MIN_RATIO
from .cost import Cost
from .groups import ChannelGroups, PruneError, in_steps


def uniform(
    groups: ChannelGroups, cost: Cost, target: float, min_ratio: float = MIN_RATIO, step: int = 1
) -> dict[str, int]:
    """One keep ratio for every group, counts rounded to ``step``: the largest ratio, in steps of
    1/100, whose plan meets ``target``."""
    units, _ = groups.steps(step, min_ratio)

    def plan(ratio: float) -> dict[str, int]:
        return {
            g.name: max(units[g.name], round(ratio * g.size / units[g.name]) * units[g.name]) for g in groups.groups
        }

    ratios = [r / 100 for r in range(100, math.floor(min_ratio * 100) - 1, -1)]
    for ratio in ratios:
        if cost.total(plan(ratio)) <= target:
            return plan(ratio)
    best = min(cost.total(plan(r)) for r in ratios)
    raise PruneError(
        f"budget: {target:.4g} {cost.unit} is out of reach with one ratio for every group"
        f"{in_steps(step)} (the cheapest ratio costs {best:.4g} {cost.unit})"
    )


def global_ranking(
    groups: ChannelGroups,
    cost: Cost,
    importance: dict[str, torch.Tensor],
    target: float,
    min_ratio: float = MIN_RATIO,
    step: int = 1,
) -> dict[str, int]:
    """Global pruning as FLOPs-driven pruners do it: drop the least important channels of the whole
    network (``step`` at a time in a group whose size is a multiple of it), whatever they cost,
    until ``target`` is met."""
    units, floors = groups.steps(step, min_ratio)
    ranked = {g.name: torch.sort(g.averaged(importance[g.name])).values for g in groups.groups}
    plan = groups.dense

    def next_chunk(name: str) -> float:
        removed = groups.by_name[name].size - plan[name]
        return float(ranked[name][removed : removed + units[name]].mean())

    while cost.total(plan) > target:
        open_groups = [name for name in plan if plan[name] - units[name] >= floors[name]]
        if not open_groups:
            raise PruneError(
                f"budget: {target:.4g} {cost.unit} is out of reach; the smallest plan "
                f"({min_ratio:.0%} of each group{in_steps(step)}) costs {cost.total(plan):.4g} {cost.unit}"
            )
        weakest = min(open_groups, key=next_chunk)
        plan[weakest] -= units[weakest]
    return plan
