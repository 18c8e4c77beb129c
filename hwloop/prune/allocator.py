"""Channel counts under a cost budget: greedy importance-per-cost allocation (in the spirit of HALP
and NetAdapt).

From the dense plan, each step considers, for every group, dropping its least important channels
down to each smaller count (for wide groups: the multiples of the cost's alignment step), prices
every move with the cost's batched per-layer figures, and takes the move that loses the least
importance per unit of cost saved; once single moves can close the remaining gap, it takes the one
of those that loses the least importance. A move loses the share of its group's importance it
removes, times the group's weight (the layers it spans, see :mod:`.importance`): a channel of a
16-channel residual stream carries more of what its group passes on than one of a 960-channel
expansion, and counting channels alone cuts narrow streams to the floor first. Moves of many
channels at once let a group jump to a count the device runs fast (an alignment step: off such
steps a compiled conv can be many times slower), rather than crawl through slow ragged counts. When
the whole-model cost meets the target, a last pass gives each group back any channels that cost
nothing. Importance is removed lowest-first, so the kept channels of a group are its top-``count``
channels (averaged over a grouped conv's groups, :meth:`.ChannelGroups.top`). With ``round_to``,
counts move only by multiples of it (HALP's latency-aware grouping of channels, Torch-Pruning's
``round_to``) in every group whose size is a multiple of it; a group feeding a grouped conv moves in
multiples of the conv's group count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from . import MIN_RATIO
from .cost import Cost
from .groups import ChannelGroups, Group, PruneError, in_steps


def allocate(
    groups: ChannelGroups,
    cost: Cost,
    importance: dict[str, torch.Tensor],
    target: float,
    min_ratio: float = MIN_RATIO,
    on_step: Callable[[float], None] | None = None,
    round_to: int = 1,
) -> dict[str, int]:
    """The plan (channel count per group) that meets ``cost.total(plan) <= target`` greedily."""
    plan = groups.dense
    units, floors = groups.steps(round_to, min_ratio)
    lost = {g.name: _lost(g.averaged(importance[g.name])) for g in groups.groups}
    touched = _touched(groups)
    while (total := cost.total(plan)) > target:
        if on_step:
            on_step(total)
        moves = [
            (g, c)
            for g in groups.groups
            for c in _candidates(g, plan[g.name], floors[g.name], cost.step, units[g.name])
        ]
        if not moves:
            raise PruneError(
                f"budget: {target:.4g} {cost.unit} is out of reach; the smallest plan "
                f"({min_ratio:.0%} of each group{in_steps(round_to)}) costs {total:.4g} {cost.unit}"
            )
        saved = _savings(groups, cost, plan, moves, touched)

        def loss(move: tuple[Group, int]) -> float:
            group, count = move
            return lost[group.name][group.size - count] - lost[group.name][group.size - plan[group.name]]

        finishing = [move for move, saving in zip(moves, saved) if saving >= total - target]
        useful = [(loss(move) / saving, move) for move, saving in zip(moves, saved) if saving > 0]
        if finishing:
            best = min(finishing, key=loss)
        elif useful:
            best = min(useful, key=lambda item: item[0])[1]
        else:
            best = max(zip(moves, saved), key=lambda item: (item[1], -item[0][1]))[0]
        plan[best[0].name] = best[1]
    if on_step:
        on_step(total)
    return _give_back(groups, cost, plan, target, touched, units)


def _lost(score: torch.Tensor) -> np.ndarray:
    """``result[k]``: the importance lost by removing a group's ``k`` least important channels, as
    a share of the group's channels (scores are normalised to a mean of 1 within a group and
    weighted by the layers it spans, so a whole group loses that weight)."""
    return np.concatenate([[0.0], np.cumsum(np.sort(score.double().numpy()))]) / len(score)


def _candidates(group: Group, count: int, floor: int, aligned: int, unit: int) -> list[int]:
    """Every smaller count of a group of up to 64 channels; for wider groups, the multiples of the
    cost's alignment step below and the next step of 1/64 of the group; with a ``unit`` above 1,
    its multiples only."""
    if unit > 1:
        return list(range(floor, count, unit))
    if group.size <= 64:
        return list(range(floor, count))
    step = max(1, group.size // 64)
    return sorted(
        {c for c in range(floor, count) if c % aligned == 0} | ({count - step} if count - step >= floor else set())
    )


def _touched(groups: ChannelGroups) -> dict[str, list[int]]:
    """Indices (into the traced layers) of the layers whose channel counts each group sets."""
    index = {}
    for position, traced in enumerate(groups.traced):
        index.setdefault(traced.name, []).append(position)
    return {
        g.name: sorted(i for name in (*g.producers, *g.consumers, *g.depthwise) for i in index.get(name, []))
        for g in groups.groups
    }


def _savings(
    groups: ChannelGroups,
    cost: Cost,
    plan: dict[str, int],
    moves: list[tuple[Group, int]],
    touched: dict[str, list[int]],
) -> np.ndarray:
    """Per-layer cost saved by each move, all moves priced in one batched call."""
    current = groups.layers(plan)
    configs, spans = [], []
    for group, count in moves:
        layers = groups.layers({**plan, group.name: count})
        start = len(configs)
        for i in touched[group.name]:
            configs += [current[i], layers[i]]
        spans.append((start, len(configs)))
    values = cost.layers(configs) if configs else np.zeros(0)
    return np.array([values[a:b:2].sum() - values[a + 1 : b : 2].sum() for a, b in spans])


def _give_back(
    groups: ChannelGroups,
    cost: Cost,
    plan: dict[str, int],
    target: float,
    touched: dict[str, list[int]],
    units: dict[str, int],
) -> dict[str, int]:
    """Raise each group to the largest count up to a window above it that costs no more per layer."""
    for group in groups.groups:
        count, unit = plan[group.name], units[group.name]
        ups = list(range(count + unit, min(group.size, count + max(8, group.size // 8, unit)) + 1, unit))
        if not ups:
            continue
        saved = _savings(groups, cost, plan, [(group, c) for c in ups], touched)
        free = [c for c, s in zip(ups, saved) if s >= 0]
        if free and cost.total({**plan, group.name: max(free)}) <= target:
            plan[group.name] = max(free)
    return plan
