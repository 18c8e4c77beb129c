"""Soft channel masks on a dense model, for the methods that train which channels to keep.

A group's channels reach the output only through the layers that consume them (convs, linears,
depthwise convs), so scaling a channel at the input of every consumer by 0 is exactly pruning it.
:class:`ConsumerHooks` installs such input transforms as forward pre-hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .groups import ChannelGroups


@dataclass(frozen=True)
class Feed:
    """A group's channels at a consuming layer's input: their ``positions`` on the input's channel
    ``axis`` (1 for a conv's NCHW input, the last for a linear's, whatever its rank) and the group
    channel at each position (``roots``)."""

    group: str
    positions: torch.Tensor
    roots: torch.Tensor
    axis: int

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Per-channel ``values`` of the group, one per position."""
        return values[self.roots]


def feeds(groups: ChannelGroups) -> dict[str, list[Feed]]:
    """For each consuming layer, the groups feeding it."""
    modules = dict(groups.model.named_modules())
    result: dict[str, list[Feed]] = {}
    for group in groups.groups:
        for name, positions in (*group.consumers.items(), *group.depthwise.items()):
            axis = -1 if isinstance(modules[name], nn.Linear) else 1
            result.setdefault(name, []).append(
                Feed(
                    group.name,
                    torch.tensor(positions, dtype=torch.long),
                    torch.tensor(group.roots[name], dtype=torch.long),
                    axis,
                )
            )
    return result


def channel_view(x: torch.Tensor, values: torch.Tensor, axis: int) -> torch.Tensor:
    """``values`` (one per channel) shaped to broadcast over ``x``'s channel ``axis``."""
    shape = [1] * x.dim()
    shape[axis] = -1
    return values.view(shape)


def scale_channels(x: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` with the channels at ``positions`` (on ``axis``) multiplied by ``values`` (differentiable in both)."""
    factor = torch.ones(x.shape[axis], dtype=x.dtype, device=x.device).index_copy(0, positions, values.to(x.dtype))
    return x * channel_view(x, factor, axis)


def compose(transforms: list[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """One input transform applying ``transforms`` in turn (a layer fed by several groups)."""

    def composed(x: torch.Tensor) -> torch.Tensor:
        for transform in transforms:
            x = transform(x)
        return x

    return composed


class ConsumerHooks:
    """Context manager: ``transforms[name](x)`` replaces the input of module ``name`` while active."""

    def __init__(self, model: nn.Module, transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]]):
        modules = dict(model.named_modules())
        self._targets = [(modules[name], fn) for name, fn in transforms.items()]
        self._handles = []

    def __enter__(self) -> "ConsumerHooks":
        for module, fn in self._targets:
            self._handles.append(module.register_forward_pre_hook(lambda _m, args, fn=fn: (fn(args[0]), *args[1:])))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
