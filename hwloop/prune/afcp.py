"""AFCP: acceleration-aware fine-grained channel pruning with residual gates.

Every channel of every group gets a trainable keep gate ``m = sigmoid(theta)``. Where a group's
channels feed only plain convs or linears (so a channel's contribution is linear in it), each
channel also gets a residual gate ``r = sigmoid(rho)`` choosing between zeroing the channel out and
replacing it by its most similar channel ``k`` scaled by ``alpha`` (least squares on the consumers'
inputs): the consumers see ``m x_j + (1 - m) r alpha x_k``. Gates and weights train together with
distillation from the dense model and the device's predicted latency (differentiable, per-layer
grids) as a penalty above the target. Residual streams are gated at every block that reads them, so
a stream channel is judged by all the blocks sharing it.

Then the allocator fixes counts under the whole-model predicted latency with the keep gates as
importance; a pruned channel whose residual gate chose replacement is folded into the consumers'
weights of its most similar kept channel, and the kept channels' gate values are folded in too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import MIN_RATIO
from .allocator import allocate
from .cost import Cost, SoftCost
from .data import first_batches
from .gates import ConsumerHooks, Feed, channel_view, compose, feeds
from .groups import ChannelGroups
from .train import train

GATE_INIT = 3.0
PENALTY = 2.0


def foldable(groups: ChannelGroups) -> list[str]:
    """Groups whose channels feed only plain (ungrouped) convs and linears, one input position per
    channel, where replacing a channel folds exactly."""
    modules = dict(groups.model.named_modules())
    return [
        g.name
        for g in groups.groups
        if g.consumers
        and not g.depthwise
        and all(
            getattr(modules[name], "groups", 1) == 1 and len(positions) == g.size
            for name, positions in g.consumers.items()
        )
    ]


@torch.no_grad()
def similarity(groups: ChannelGroups, batches: Iterable, names: list[str]) -> dict[str, torch.Tensor]:
    """Per group, the Gram matrix of its channels over the inputs of all its consumers."""
    grams = {
        name: torch.zeros(groups.by_name[name].size, groups.by_name[name].size, dtype=torch.float64) for name in names
    }

    def record(group: str, positions: torch.Tensor, axis: int):
        def take(x: torch.Tensor) -> torch.Tensor:
            flat = x.index_select(axis, positions).movedim(axis, 0).reshape(len(positions), -1)
            grams[group].add_(flat.double() @ flat.double().T)
            return x

        return take

    transforms = {}
    for consumer, fed in feeds(groups).items():
        chain = [record(feed.group, feed.positions, feed.axis) for feed in fed if feed.group in grams]
        if chain:
            transforms[consumer] = compose(chain)
    was_training = groups.model.training
    groups.model.eval()
    with ConsumerHooks(groups.model, transforms):
        for inputs, _ in batches:
            groups.model(inputs)
    groups.model.train(was_training)
    return grams


def nearest(gram: torch.Tensor, candidates: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each channel j, the channel k (among ``candidates``, never j itself) that best
    reconstructs it as ``alpha * x_k``, and that ``alpha``."""
    diagonal = gram.diagonal().clamp_min(1e-12)
    alpha = gram / diagonal.unsqueeze(0)  # alpha[j, k] = <x_j, x_k> / <x_k, x_k>
    error = gram.diagonal().unsqueeze(1) - gram**2 / diagonal.unsqueeze(0)
    error.fill_diagonal_(float("inf"))
    if candidates is not None:
        allowed = torch.full_like(error, float("inf"))
        allowed[:, candidates] = 0
        error = error + allowed
    k = error.argmin(1)
    return k, alpha.gather(1, k.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def fold(
    groups: ChannelGroups,
    keep: dict[str, list[int]],
    replaced: dict[str, list[int]],
    grams: dict[str, torch.Tensor],
    scale: dict[str, torch.Tensor] | None = None,
) -> int:
    """Fold into the consumers' weights each kept channel's ``scale`` (its gate value), then each
    replaced channel j as ``alpha * x_k`` of its most similar kept channel k. Call before pruning;
    returns how many channels were replaced."""
    modules = dict(groups.model.named_modules())
    for name, values in (scale or {}).items():
        group, kept = groups.by_name[name], keep[name]
        for consumer, positions in group.consumers.items():
            roots = torch.tensor(group.roots[consumer])
            at = torch.isin(roots, torch.tensor(kept))
            _scale_inputs(modules[consumer], torch.tensor(positions)[at], values[roots[at]])
        for consumer, positions in group.depthwise.items():
            weight = modules[consumer].weight
            weight[torch.tensor(positions)[kept]] *= values[kept].view(-1, 1, 1, 1)
    for name, channels in replaced.items():
        k, alpha = nearest(grams[name], keep[name])
        for consumer, positions in groups.by_name[name].consumers.items():
            weight = modules[consumer].weight
            for j in channels:
                weight[:, positions[int(k[j])]] += float(alpha[j]) * weight[:, positions[j]]
    return sum(len(channels) for channels in replaced.values())


def _scale_inputs(layer: nn.Module, channels: torch.Tensor, values: torch.Tensor) -> None:
    """Multiply the weights of ``layer`` (a linear, or a conv, grouped or not) that read its input
    ``channels`` by ``values``."""
    weight = layer.weight
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        weight[:, channels] *= values.view(1, -1, *[1] * (weight.dim() - 2))
        return
    per_in, per_out = layer.in_channels // groups, layer.out_channels // groups
    blocks = weight.view(groups, per_out, per_in, *weight.shape[2:])
    blocks[channels // per_in, :, channels % per_in] *= values.view(-1, 1, *[1] * (weight.dim() - 2))


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
    """Train the gates, choose the plan, fold; returns the plan, kept channels and a record entry."""
    model = groups.model
    replaceable = foldable(groups)
    grams = similarity(groups, first_batches(loader, 8), replaceable)
    pairs = {name: nearest(grams[name]) for name in replaceable}
    theta = {g.name: nn.Parameter(torch.full((g.size,), GATE_INIT)) for g in groups.groups}
    rho = {name: nn.Parameter(torch.zeros(groups.by_name[name].size)) for name in replaceable}
    soft = SoftCost(cost)

    def gate(feed: Feed):
        group, axis = feed.group, feed.axis

        def apply(x: torch.Tensor) -> torch.Tensor:
            channels = x.index_select(axis, feed.positions)
            m = channel_view(x, feed.spread(torch.sigmoid(theta[group])), axis)
            mixed = m * channels
            if group in pairs:
                k, alpha = pairs[group]
                r = channel_view(x, torch.sigmoid(rho[group]) * alpha.float(), axis)
                mixed = mixed + (1 - m) * r * channels.index_select(axis, k)
            return x.index_copy(axis % x.dim(), feed.positions, mixed)

        return apply

    transforms = {consumer: compose([gate(feed) for feed in fed]) for consumer, fed in feeds(groups).items()}

    def penalty() -> torch.Tensor:
        latency = soft({name: torch.sigmoid(t).sum() for name, t in theta.items()})
        return PENALTY * torch.relu(latency / target - 1)

    gates = [*theta.values(), *rho.values()]
    with ConsumerHooks(model, transforms):
        train(
            model,
            loader,
            epochs,
            lr=0.01,
            teacher=teacher,
            penalty=penalty,
            extra_params=[{"params": gates, "lr": 0.1, "weight_decay": 0}],
            on_batch=on_batch,
        )
    keep_values = {name: torch.sigmoid(t.detach()) for name, t in theta.items()}
    plan = allocate(groups, cost, keep_values, target, min_ratio)
    keep = groups.top(keep_values, plan)
    replaced = {
        name: [
            j
            for j in range(groups.by_name[name].size)
            if j not in set(keep[name]) and torch.sigmoid(rho[name][j]) > 0.5
        ]
        for name in replaceable
    }
    folded = fold(groups, keep, replaced, grams, keep_values)
    return (
        plan,
        keep,
        {"replaced_channels": folded, "zeroed_channels": sum(g.size - plan[g.name] for g in groups.groups) - folded},
    )
