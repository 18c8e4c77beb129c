"""Channel groups: the channels that must be pruned together, from Torch-Pruning's dependency graph.

A group is rooted at the output channels of a conv or linear layer and holds every layer those
channels reach: the producers of a residual sum, the consumers after a concatenation, a depthwise
conv's in and out channels. A *plan* maps each group's name to the channel count it keeps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn

from ..layers import LayerConfig
from ..space import SpaceError, trace_layers


class PruneError(ValueError):
    """A model, plan or pruning request hwloop cannot use; the message names the part at fault."""


@dataclass
class Group:
    """One prunable group: its name (the root layer's module name) and dense channel count, which
    layers' output channels it sets (``producers``), which layers' input channels (``consumers``:
    module name to input-channel positions, in the order of the group's channels) and which depthwise
    convs it runs through (their in and out channels at those positions)."""

    name: str
    size: int
    root: nn.Module
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    depthwise: dict[str, list[int]] = field(default_factory=dict)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module)


class ChannelGroups:
    """The channel groups of ``model`` (traced on zeros of ``input_shape``) and how to prune them.

    The model's output layer and every group that touches a grouped (non-depthwise) conv stay dense.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.model = model
        self.input_shape = tuple(input_shape)
        was_training = model.training
        model.eval()
        try:
            self.traced = trace_layers(model, self.input_shape)
        except SpaceError as exc:
            raise PruneError(f"cannot trace the model: {exc}") from exc
        modules = dict(model.named_modules())
        names = {module: name for name, module in modules.items()}
        outputs = [modules[t.name] for t in self.traced if not t.prunable_out]
        try:
            self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(self.input_shape))
            found = list(self.graph.get_all_groups(ignored_layers=outputs, root_module_types=[nn.Conv2d, nn.Linear]))
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning raises many kinds on untraceable models
            raise PruneError(f"Torch-Pruning cannot build the dependency graph of {type(model).__name__}: "
                             f"{type(exc).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
        self.groups: list[Group] = []
        for found_group in found:
            group = self._group(found_group, names)
            if group is not None:
                self.groups.append(group)
        self.by_name = {g.name: g for g in self.groups}

    def _group(self, found, names: dict) -> Group | None:
        root = found[0].dep.target.module
        group = Group(names[root], len(found[0].idxs), root)
        for item in found:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            name = names[module]
            if _is_grouped(module):
                return None
            if _is_depthwise(module):
                group.depthwise[name] = [int(i) for i in item.idxs]
            elif self.graph.is_out_channel_pruning_fn(item.dep.handler):
                group.producers.append(name)
            else:
                group.consumers[name] = [int(i) for i in item.idxs]
        return group

    @property
    def dense(self) -> dict[str, int]:
        """The dense plan: every group at its full channel count."""
        return {g.name: g.size for g in self.groups}

    def steps(self, round_to: int, min_ratio: float) -> tuple[dict[str, int], dict[str, int]]:
        """Per group, the channels a count moves by (``round_to`` when the group's size is a multiple
        of it, else 1) and the smallest count (``min_ratio`` of the size, up to a whole step)."""
        units = {g.name: round_to if round_to > 1 and g.size % round_to == 0 else 1 for g in self.groups}
        floors = {g.name: max(units[g.name], math.ceil(min_ratio * g.size / units[g.name]) * units[g.name])
                  for g in self.groups}
        return units, floors

    def check(self, plan: dict[str, int]) -> None:
        """Raise :class:`PruneError` unless ``plan`` names known groups with counts in 1..size."""
        for name, count in plan.items():
            if name not in self.by_name:
                raise PruneError(f"plan: unknown group {name!r}; groups are {', '.join(self.by_name)}")
            size = self.by_name[name].size
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= size:
                raise PruneError(f"plan: {name}: channel count must be an integer in 1..{size}, got {count!r}")

    def layers(self, plan: dict[str, int]) -> list[LayerConfig]:
        """The model's conv/linear layers, in call order, with the channel counts of ``plan``."""
        self.check(plan)
        removed_in: dict[str, int] = {}
        removed_out: dict[str, int] = {}
        for g in self.groups:
            cut = g.size - plan.get(g.name, g.size)
            for name in g.producers:
                removed_out[name] = removed_out.get(name, 0) + cut
            for name in g.consumers:
                removed_in[name] = removed_in.get(name, 0) + cut
            for name in g.depthwise:
                removed_in[name] = removed_in.get(name, 0) + cut
        return [resized(t.config, t.config.in_channels - removed_in.get(t.name, 0),
                        t.config.out_channels - removed_out.get(t.name, 0)) for t in self.traced]

    def apply(self, keep: dict[str, list[int]]) -> None:
        """Prune the model in place: group ``name`` keeps the channels ``keep[name]`` (dense indices).
        Call once: the groups describe the dense model."""
        for name, kept in keep.items():
            group = self.by_name.get(name)
            if group is None:
                raise PruneError(f"plan: unknown group {name!r}")
            kept = sorted(set(int(i) for i in kept))
            if not kept or kept[0] < 0 or kept[-1] >= group.size:
                raise PruneError(f"plan: {name}: kept channels must be 1..{group.size} indices in 0..{group.size - 1}")
            drop = [i for i in range(group.size) if i not in set(kept)]
            if drop:
                fn = tp.prune_linear_out_channels if isinstance(group.root, nn.Linear) else tp.prune_conv_out_channels
                self.graph.get_pruning_group(group.root, fn, drop).prune()

    def apply_plan(self, plan: dict[str, int]) -> None:
        """Prune the model in place to ``plan``'s counts, keeping each group's first channels
        (the layout a saved pruned state dict is loaded into)."""
        self.check(plan)
        self.apply({name: list(range(count)) for name, count in plan.items()})


def pruned_copy(model: nn.Module, input_shape: tuple[int, ...], keep: dict[str, list[int]]) -> nn.Module:
    """A copy of ``model`` (in eval mode) in which group ``name`` keeps the channels ``keep[name]``."""
    model = copy.deepcopy(model).eval()
    ChannelGroups(model, input_shape).apply(keep)
    return model


def thinned(model: nn.Module, input_shape: tuple[int, ...], share: float) -> nn.Module:
    """A copy of ``model`` with every channel group cut to ``share`` of its channels (at least one):
    a model to time, so that the whole-model calibration spans the range pruned models fall in."""
    model = copy.deepcopy(model)
    groups = ChannelGroups(model, input_shape)
    groups.apply_plan({g.name: max(1, round(share * g.size)) for g in groups.groups})
    return model


def in_steps(step: int) -> str:
    """``", in steps of N"`` for error messages about counts rounded to ``step``; empty for 1."""
    return f", in steps of {step}" if step > 1 else ""


def resized(config: LayerConfig, in_channels: int, out_channels: int) -> LayerConfig:
    """``config`` with new channel counts; a depthwise conv keeps its multiplier and ignores ``out_channels``."""
    if config.op == "depthwise_conv2d":
        multiplier = config.out_channels // config.in_channels
        return replace(config, in_channels=in_channels, out_channels=in_channels * multiplier, groups=in_channels)
    return replace(config, in_channels=in_channels, out_channels=out_channels)
