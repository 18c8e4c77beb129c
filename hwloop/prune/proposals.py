"""Plans proposed around the allocator's and ranked by short fine-tunes, as NetAdapt ranks its
proposals by short-term fine-tuning.

Importance scored on the dense model does not see which narrow groups the pruned network will miss:
plans of the same predicted latency that cut different groups end up a point or more apart after
fine-tuning. :func:`propose` makes other plans at the same target (the allocator again, each
group's importance scaled by a log-normal factor, so that whole groups trade places while the
channels kept within a group stay its most important), and :func:`ranked` ranks them by
successive halving: each is fine-tuned, distilled from the dense model, for one pass over most of
a fixed sample of training batches and scored on the rest of that sample, held out of the
fine-tuning; the better half goes on for another pass and is scored again, until two or three
remain, ranked after their last pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .allocator import allocate
from .cost import Cost
from .groups import pruned_copy
from .train import evaluate, train

SPREAD = 0.5  # standard deviation of the log of a group's importance factor
BATCHES = 200  # training batches sampled (or one pass of a shorter loader)
HELD_OUT = 0.2  # share of the sampled batches that ranks the proposals


@dataclass
class Proposal:
    """A group factor (on importance) and the plan the allocator makes with it."""

    factors: dict[str, float]
    plan: dict[str, int]
    predicted_ms: float
    accuracy: float = float("nan")  # held out, after its last pass
    passes: int = 0


def propose(
    cost: Cost,
    importance: dict[str, torch.Tensor],
    target: float,
    count: int,
    seed: int,
    min_ratio: float,
    round_to: int = 1,
) -> list[Proposal]:
    """Up to ``count`` distinct plans meeting ``target`` under ``cost``, the first with importance as
    it is, the others with each group's importance scaled by a random factor; draws stop after
    ``4 * count`` tries."""
    groups, rng = cost.groups, np.random.default_rng(seed)
    proposals: dict[tuple[int, ...], Proposal] = {}
    for draw in range(4 * count):
        factors = {name: float(np.exp(SPREAD * rng.standard_normal())) if draw else 1.0 for name in importance}
        plan = allocate(groups, cost, scaled(importance, factors), target, min_ratio, round_to=round_to)
        key = tuple(plan[g.name] for g in groups.groups)
        if key not in proposals:
            proposals[key] = Proposal(factors, plan, cost.total(plan))
        if len(proposals) == count:
            break
    return list(proposals.values())


def ranked(
    dense: nn.Module,
    input_shape: tuple[int, ...],
    proposals: list[Proposal],
    importance: dict[str, torch.Tensor],
    batches: list,
    seed: int,
    lr: float,
    on_batch: Callable[[float], None] | None = None,
) -> list[Proposal]:
    """``proposals`` (plans of ``dense``, each keeping its groups' most important channels) ranked
    by successive halving: the last one standing first, then the others by the round they fell in
    and their accuracy then. ``batches``: ``(inputs, labels)`` pairs of training data, the last
    :data:`HELD_OUT` of them held out to rank on; ``on_batch`` is called after each of the
    ``passes(len(proposals), batches)`` fine-tuning batches."""
    tune, rank = split(batches)
    alive: list[tuple[Proposal, nn.Module | None]] = [(proposal, None) for proposal in proposals]
    for size in rounds(len(proposals)):
        tuned = []
        for proposal, model in alive[:size]:
            if model is None:
                model = pruned_copy(dense, input_shape, importance, proposal.plan)
            torch.manual_seed(seed)
            train(model, tune, 1, lr=lr, teacher=dense, on_batch=on_batch)
            proposal.accuracy, proposal.passes = evaluate(model, rank), proposal.passes + 1
            tuned.append((proposal, model))
        alive = sorted(tuned, key=lambda pair: -pair[0].accuracy)
    return sorted(proposals, key=lambda p: (-p.passes, -p.accuracy))


def passes(count: int, batches: list) -> int:
    """Fine-tuning batches :func:`ranked` runs for ``count`` proposals."""
    return sum(rounds(count)) * len(split(batches)[0])


def rounds(count: int) -> list[int]:
    """How many proposals are fine-tuned in each round of successive halving (``[16, 8, 4, 2]``)."""
    sizes = [count]
    while sizes[-1] >= 4:
        sizes.append(sizes[-1] // 2)
    return sizes


def split(batches: list) -> tuple[list, list]:
    """``batches`` split into those each proposal is fine-tuned on and the last :data:`HELD_OUT`, ranked on."""
    held = max(1, round(len(batches) * HELD_OUT))
    return batches[:-held], batches[-held:]


def scaled(importance: dict[str, torch.Tensor], factors: dict[str, float]) -> dict[str, torch.Tensor]:
    """Each group's importance times its factor."""
    return {name: score * factors[name] for name, score in importance.items()}
