"""Soft channel masks on a dense model, for the methods that train which channels to keep.

A group's channels reach the output only through the layers that consume them (convs, linears,
depthwise convs), so scaling a channel at the input of every consumer by 0 is exactly pruning it.
:class:`ConsumerHooks` installs such input transforms as forward pre-hooks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .groups import ChannelGroups


def feeds(groups: ChannelGroups) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """For each consuming layer, the groups feeding it and their input-channel positions."""
    result: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for group in groups.groups:
        for name, positions in (*group.consumers.items(), *group.depthwise.items()):
            result.setdefault(name, []).append((group.name, torch.tensor(positions, dtype=torch.long)))
    return result


def channel_view(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per channel) shaped to broadcast over ``x``'s channel axis (1 for NCHW, last for NC)."""
    return values.view(1, -1, 1, 1) if x.dim() == 4 else values


def scale_channels(x: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with the channels at ``positions`` multiplied by ``values`` (differentiable in both)."""
    channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
    factor = torch.ones(channels, dtype=x.dtype, device=x.device).index_copy(0, positions, values.to(x.dtype))
    return x * channel_view(x, factor)


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
