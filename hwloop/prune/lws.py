"""Layer-wise pruning-rule search with distillation.

Each group (layer) chooses, differentiably, among pruning rules (L1 norm, BN scale, Taylor,
geometric median): its channels are ranked by a softmax-weighted mix of the rules' rank scores and
softly masked around the count the latency allocator gives it (the sparsity constraint from the
device's predicted latency). The rule weights train with the network under distillation from the
dense teacher; each group then keeps its top channels under its strongest rule, and the kept
channels' mask values under that rule are folded into the consumers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import MIN_RATIO
from .afcp import fold
from .allocator import allocate
from .cost import Cost
from .data import first_batches
from .gates import ConsumerHooks, Feed, compose, feeds, scale_channels
from .groups import ChannelGroups
from .importance import scores
from .train import train

RULES = ("l1", "bn_scale", "taylor", "geometric_median")
TEMPERATURE = 0.05


def ranks(score: torch.Tensor) -> torch.Tensor:
    """Scores mapped to their rank in [0, 1] (0 the least important), so that rules compare."""
    order = torch.argsort(torch.argsort(score, stable=True), stable=True).float()
    return order / max(1, len(score) - 1)


def search(
    groups: ChannelGroups,
    cost: Cost,
    target: float,
    loader,
    teacher: nn.Module,
    epochs: int,
    min_ratio: float = MIN_RATIO,
    on_batch: Callable[[float], None] | None = None,
):
    """Search each group's rule; returns the plan, the kept channels and the rule of every group."""
    batches = first_batches(loader, 4)
    by_rule = {rule: scores(groups, rule, batches) for rule in RULES}
    stacked = {g.name: torch.stack([ranks(by_rule[rule][g.name]) for rule in RULES]) for g in groups.groups}
    plan = allocate(groups, cost, {name: ranks_.mean(0) for name, ranks_ in stacked.items()}, target, min_ratio)
    beta = {g.name: nn.Parameter(torch.zeros(len(RULES))) for g in groups.groups}

    def mask(name: str, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Soft keep mask of a group's channels, by its rule mix (or by the rule ``weights`` given)."""
        mixed = (torch.softmax(beta[name], 0) if weights is None else weights) @ stacked[name]
        count = plan[name]
        if count == len(mixed):
            return torch.ones_like(mixed)
        top = torch.sort(mixed.detach(), descending=True).values
        threshold = (top[count - 1] + top[count]) / 2
        return torch.sigmoid((mixed - threshold) / TEMPERATURE)

    def gate(feed: Feed):
        return lambda x: scale_channels(x, feed.positions, feed.spread(mask(feed.group)), feed.axis)

    transforms = {consumer: compose([gate(feed) for feed in fed]) for consumer, fed in feeds(groups).items()}
    with ConsumerHooks(groups.model, transforms):
        train(
            groups.model,
            loader,
            epochs,
            lr=0.01,
            teacher=teacher,
            extra_params=[{"params": list(beta.values()), "lr": 0.5, "weight_decay": 0}],
            on_batch=on_batch,
        )
    rules = {name: RULES[int(b.argmax())] for name, b in beta.items()}
    keep = groups.top({name: by_rule[rules[name]][name] for name in plan}, plan)
    with torch.no_grad():
        chosen = {name: mask(name, nn.functional.one_hot(beta[name].argmax(), len(RULES)).float()) for name in plan}
        fold(groups, keep, {}, {}, chosen)
    return plan, keep, {"rules": rules}
