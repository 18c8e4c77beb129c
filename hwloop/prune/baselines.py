"""Baselines the latency-aware methods are compared against, on the same groups and importance."""

from __future__ import annotations

import math

import torch

from .cost import Cost
from .groups import ChannelGroups, PruneError


def uniform(groups: ChannelGroups, cost: Cost, target: float, min_ratio: float = 0.1) -> dict[str, int]:
    """One keep ratio for every group: the largest (to 1/1000) whose plan meets ``target``."""
    def plan(ratio: float) -> dict[str, int]:
        return {g.name: max(1, round(ratio * g.size)) for g in groups.groups}

    if cost.total(plan(min_ratio)) > target:
        raise PruneError(f"budget: {target:.4g} {cost.unit} is out of reach with a uniform ratio "
                         f"(at {min_ratio:.0%} of every group: {cost.total(plan(min_ratio)):.4g} {cost.unit})")
    low, high = min_ratio, 1.0
    while high - low > 1e-3:
        middle = (low + high) / 2
        low, high = (middle, high) if cost.total(plan(middle)) <= target else (low, middle)
    return plan(low)


def global_ranking(groups: ChannelGroups, cost: Cost, importance: dict[str, torch.Tensor], target: float,
                   min_ratio: float = 0.1) -> dict[str, int]:
    """Global pruning as FLOPs-driven pruners do it: drop the least important channels of the whole
    network, whatever they cost, 1 % of the remaining channels at a time, until ``target`` is met."""
    floors = {g.name: max(1, math.ceil(min_ratio * g.size)) for g in groups.groups}
    ranked = {g.name: torch.sort(importance[g.name]).values.tolist() for g in groups.groups}
    plan = groups.dense

    def weakest() -> str | None:
        open_groups = [name for name in plan if plan[name] > floors[name]]
        return min(open_groups, key=lambda name: ranked[name][groups.by_name[name].size - plan[name]], default=None)

    while cost.total(plan) > target:
        for _ in range(max(1, sum(plan.values()) // 100)):
            name = weakest()
            if name is None:
                raise PruneError(f"budget: {target:.4g} {cost.unit} is out of reach; the smallest plan "
                                 f"({min_ratio:.0%} of each group) costs {cost.total(plan):.4g} {cost.unit}")
            plan[name] -= 1
    return plan
