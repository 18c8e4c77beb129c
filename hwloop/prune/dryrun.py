"""The dry run of ``hwloop prune``: find a model's channel groups, prune each to about half and check
that the pruned model computes what the dense one does without those channels.

Zeroing a group's dropped channels at the input of every layer that consumes them (see
:mod:`.gates`) leaves the dense model computing exactly what the pruned model computes, when the
grouping is right; only layers that normalise across channels (LayerNorm over the channel axis)
see the dropped channels otherwise. So the check compares the pruned model's output with the
masked dense model's, on a random input, besides the output shape with the dense model's.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from torch import nn

from .gates import ConsumerHooks, compose, feeds, scale_channels
from .groups import ChannelGroups


@dataclass
class DryRun:
    groups: ChannelGroups
    plan: dict[str, int]
    dense_shape: tuple[int, ...]
    pruned_shape: tuple[int, ...]
    difference: float  # largest |pruned - masked dense| over the largest |masked dense|

    @property
    def shapes_hold(self) -> bool:
        return self.pruned_shape == self.dense_shape


def dry_run(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> DryRun:
    """``model``'s groups, each cut to about half of its channels (chosen at random, whole positions
    of a grouped conv's groups), and the pruned model checked against the dense one."""
    model = copy.deepcopy(model).eval()
    groups = ChannelGroups(copy.deepcopy(model), input_shape)
    rng = random.Random(seed)
    plan = {g.name: g.unit * max(1, g.size // g.unit // 2) for g in groups.groups}
    keep = groups.top({g.name: torch.tensor([rng.random() for _ in range(g.size)]) for g in groups.groups}, plan)
    dropped = {
        name: torch.tensor([i not in set(kept) for i in range(groups.by_name[name].size)])
        for name, kept in keep.items()
    }
    masks = {
        consumer: compose([_zeroing(feed.positions[feed.spread(dropped[feed.group])], feed.axis) for feed in fed])
        for consumer, fed in feeds(groups).items()
    }
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        dense = _output(model(x))
        with ConsumerHooks(model, masks):
            masked = _output(model(x))
        groups.apply(keep)
        pruned = _output(groups.model(x))
    difference = float("inf")
    if pruned.shape == masked.shape:
        difference = float((pruned - masked).abs().max()) / max(float(masked.abs().max()), 1e-12)
    return DryRun(groups, plan, tuple(dense.shape), tuple(pruned.shape), difference)


def _zeroing(positions: torch.Tensor, axis: int):
    return lambda x: scale_channels(x, positions, torch.zeros(len(positions)), axis)


def _output(value) -> torch.Tensor:
    """The model's output tensor (the first, for a model returning several)."""
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value
