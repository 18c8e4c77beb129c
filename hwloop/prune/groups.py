"""Channel groups: the channels that must be pruned together, from Torch-Pruning's dependency graph.

A group is rooted at the output channels of a conv or linear layer and holds every layer those
channels reach: the producers of a residual sum, the consumers after a concatenation, a depthwise
conv's in and out channels. A *plan* maps each group's name to the channel count it keeps.

A grouped conv (1 < groups < channels: ResNeXt, RegNet) is pruned as Torch-Pruning prunes it: the
same channels in every one of its groups, so it keeps its group count and each group narrows
alike. Its in and out channels then stay separate groups (each free to narrow), the layer stays a
grouped conv of the same ``groups`` (the config the predictor prices), and the kept channels are
those whose importance, averaged over the conv's groups, is highest. Counts of such a group move in
multiples of the conv's group count (its ``unit``).

Channels that reach the model's output (whatever layer produces it: a linear classifier, or
SqueezeNet's 1x1 conv) stay dense, and so do channels that pass through a reshape mixing the
channel axis with another (ShuffleNet's channel shuffle), since no pruned layout reproduces the
dense model's channel order there.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping

from ..endtoend import ModelCase
from ..layers import LayerConfig
from ..space import SpaceError
from ..tracing import trace_layers


class PruneError(ValueError):
    """A model, plan or pruning request hwloop cannot use; the message names the part at fault."""


@dataclass
class Group:
    """One prunable group: its name (the root layer's module name) and dense channel count, which
    layers' output channels it sets (``producers``), which layers' input channels (``consumers``:
    module name to input-channel positions, in the order of the group's channels) and which depthwise
    convs it runs through (their in and out channels at those positions). ``roots`` gives, for
    each consumer and depthwise conv, the group channel of each of its positions (several
    positions per channel after a flatten of (C, H, W))."""

    name: str
    size: int
    root: nn.Module
    producers: list[str] = field(default_factory=list)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    depthwise: dict[str, list[int]] = field(default_factory=dict)
    roots: dict[str, list[int]] = field(default_factory=dict)
    unit: int = 1  # counts are multiples of it: the groups of the grouped convs the channels feed or leave

    def averaged(self, score: torch.Tensor) -> torch.Tensor:
        """Per-channel ``score`` averaged over the group's blocks (each channel gets the mean of its
        position in every block), so that the lowest channels are whole positions."""
        return score.reshape(self.unit, -1).mean(0).repeat(self.unit) if self.unit > 1 else score

    def blocks(self, kept: list[int]) -> list[int]:
        """``kept`` (dense indices) as positions within a block of ``size // unit`` channels, when
        they are the same positions in every block; raises :class:`PruneError` otherwise."""
        width = self.size // self.unit
        positions = sorted({i % width for i in kept})
        if sorted(kept) != [b * width + j for b in range(self.unit) for j in positions]:
            raise PruneError(
                f"plan: {self.name}: a grouped conv's {self.unit} groups must keep the same channels "
                f"each (positions within each block of {width})"
            )
        return positions


@dataclass(frozen=True)
class Skipped:
    """A group left dense, and why."""

    name: str
    size: int
    reason: str


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _channel_groups(module: nn.Module) -> int:
    """How many groups split a layer's channels alike (a grouped conv's, a GroupNorm's); 1 for others."""
    if _is_depthwise(module):
        return 1
    return int(getattr(module, "groups", None) or getattr(module, "num_groups", None) or 1)


def mixes_channels(node) -> bool:
    """Whether a Torch-Pruning reshape node moves channels off the channel axis or mixes them with
    another axis (a channel shuffle's ``view(N, g, C // g, H, W)``): anything but a reshape of the
    trailing axes, a flatten of (C, H, W) into one axis, or its inverse."""
    grad_fn = getattr(node, "grad_fn", None)
    if grad_fn is None or not grad_fn.next_functions or grad_fn.next_functions[0][0] is None:
        return True
    producer, index = grad_fn.next_functions[0]
    try:
        before = tuple(producer._input_metadata[index].shape)
        after = tuple(grad_fn._input_metadata[0].shape)
    except (AttributeError, IndexError, RuntimeError):
        return True
    if len(before) >= 2 and len(after) >= 2 and before[:2] == after[:2]:
        return False  # N and C kept, trailing axes reshaped
    if len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
        return False  # (N, C, H, W) flattened to (N, C*H*W), channel-major
    if len(before) == 2 and after[0] == before[0] and math.prod(after[1:]) == before[1]:
        return False  # and back
    # a channels-last tensor's leading axes merged into rows, or split back (a linear on N-D input)
    return not (
        before[-1] == after[-1] and 2 in (len(before), len(after)) and math.prod(before[:-1]) == math.prod(after[:-1])
    )


def _guarded(update):
    """Torch-Pruning's reshape index mapping, skipping reshapes that mix channels (which it cannot
    map, and fails on): the groups through them are left dense (see :class:`ChannelGroups`)."""

    def update_reshape_index_mapping(graph, node):
        if not mixes_channels(node):
            update(graph, node)

    update_reshape_index_mapping.guarded = True
    return update_reshape_index_mapping


if not getattr(index_mapping.update_reshape_index_mapping, "guarded", False):
    index_mapping.update_reshape_index_mapping = _guarded(index_mapping.update_reshape_index_mapping)


class ChannelGroups:
    """The channel groups of ``model`` (traced on zeros of ``input_shape``) and how to prune them.

    Groups left dense (reaching the model's output, passing a channel-mixing reshape, or feeding a
    grouped conv through a concatenation, where its groups cannot keep the same channels) are in
    ``skipped``.
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
            found = list(self._found(outputs, names))
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning raises many kinds on untraceable models
            raise PruneError(
                f"Torch-Pruning cannot build the dependency graph of {type(model).__name__}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            model.train(was_training)
        self.groups: list[Group] = []
        self.skipped: list[Skipped] = []
        for found_group in found:
            group = found_group if isinstance(found_group, Skipped) else self._group(found_group, names)
            (self.groups if isinstance(group, Group) else self.skipped).append(group)
        self.by_name = {g.name: g for g in self.groups}

    def _found(self, outputs: list[nn.Module], names: dict):
        """Torch-Pruning's groups, rooted at each conv or linear's output channels (as its
        ``get_all_groups``), with a :class:`Skipped` for a root whose channels it cannot map."""
        visited: set[nn.Module] = set()
        for module in list(self.graph.module2node):
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in visited:
                continue
            pruner = self.graph.get_pruner_of_module(module)
            size = pruner.get_out_channels(module)
            if module in outputs:
                yield Skipped(names[module], size, "its channels are the model's output")
                continue
            try:
                found = self.graph.get_pruning_group(module, pruner.prune_out_channels, list(range(size)))
            except (IndexError, ValueError, ZeroDivisionError, KeyError) as exc:
                yield Skipped(names[module], size, f"Torch-Pruning cannot map its channels ({type(exc).__name__})")
                continue
            reached = [
                item.dep.target.module for item in found if self.graph.is_out_channel_pruning_fn(item.dep.handler)
            ]
            visited.update(reached)
            if any(m in outputs for m in reached):
                yield Skipped(names[module], size, "its channels are the model's output")
            else:
                yield found

    def _group(self, found, names: dict) -> Group | Skipped:
        root = found[0].dep.target.module
        group = Group(names[root], len(found[0].idxs), root)
        for item in found:
            node = item.dep.target
            if node.type == tp_ops.OPTYPE.OUTPUT:
                return Skipped(group.name, group.size, "its channels are the model's output")
            if node.type == tp_ops.OPTYPE.RESHAPE and mixes_channels(node):
                return Skipped(group.name, group.size, f"its channels pass a reshape that mixes channels ({node.name})")
            module = node.module
            parts = _channel_groups(module) if isinstance(module, nn.Module) else 1
            if parts > 1:
                channels = list(range(len(item.idxs)))
                if list(map(int, item.idxs)) != list(range(group.size)) or list(map(int, item.root_idxs)) != channels:
                    return Skipped(
                        group.name,
                        group.size,
                        f"{names.get(module, node.name)} splits its channels into "
                        f"{parts} groups that this group does not cover alike",
                    )
                group.unit = math.lcm(group.unit, parts)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            name = names[module]
            if self.graph.is_out_channel_pruning_fn(item.dep.handler) and not _is_depthwise(module):
                group.producers.append(name)
                continue
            (group.depthwise if _is_depthwise(module) else group.consumers)[name] = [int(i) for i in item.idxs]
            group.roots[name] = [int(i) for i in item.root_idxs]
        return group

    @property
    def dense(self) -> dict[str, int]:
        """The dense plan: every group at its full channel count."""
        return {g.name: g.size for g in self.groups}

    def steps(self, round_to: int, min_ratio: float) -> tuple[dict[str, int], dict[str, int]]:
        """Per group, the channels a count moves by (its ``unit`` times ``round_to`` when the group's
        size is a multiple of that, else its unit) and the smallest count (``min_ratio`` of the size,
        up to a whole step)."""
        units = {
            g.name: math.lcm(g.unit, round_to) if round_to > 1 and g.size % math.lcm(g.unit, round_to) == 0 else g.unit
            for g in self.groups
        }
        floors = {
            g.name: max(units[g.name], math.ceil(min_ratio * g.size / units[g.name]) * units[g.name])
            for g in self.groups
        }
        return units, floors

    def check(self, plan: dict[str, int]) -> None:
        """Raise :class:`PruneError` unless ``plan`` names known groups with counts in 1..size."""
        for name, count in plan.items():
            if name not in self.by_name:
                raise PruneError(f"plan: unknown group {name!r}; groups are {', '.join(self.by_name)}")
            size, unit = self.by_name[name].size, self.by_name[name].unit
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= size or count % unit:
                raise PruneError(
                    f"plan: {name}: channel count must be an integer in 1..{size}{in_steps(unit)}, got {count!r}"
                )

    def top(self, importance: dict[str, torch.Tensor], plan: dict[str, int]) -> dict[str, list[int]]:
        """The dense indices of each group's ``plan[name]`` most important channels, ascending; in a
        group of several blocks (``unit``), the same positions in every block, those whose
        importance averaged over the blocks is highest."""
        keep = {}
        for name, count in plan.items():
            unit = self.by_name[name].unit
            score = importance[name].reshape(unit, -1).mean(0)
            positions = torch.argsort(score, descending=True, stable=True)[: count // unit].tolist()
            width = len(score)
            keep[name] = sorted(b * width + j for b in range(unit) for j in positions)
        return keep

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
        return [
            resized(
                t.config,
                t.config.in_channels - removed_in.get(t.name, 0),
                t.config.out_channels - removed_out.get(t.name, 0),
            )
            for t in self.traced
        ]

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
            if group.unit > 1:
                group.blocks(kept)
            drop = [i for i in range(group.size) if i not in set(kept)]
            if drop:
                fn = tp.prune_linear_out_channels if isinstance(group.root, nn.Linear) else tp.prune_conv_out_channels
                self.graph.get_pruning_group(group.root, fn, drop).prune()

    def apply_plan(self, plan: dict[str, int]) -> None:
        """Prune the model in place to ``plan``'s counts, keeping each group's first channels (of
        each block, in a group of several): the layout a saved pruned state dict is loaded into."""
        self.check(plan)
        self.apply(self.top({name: -torch.arange(self.by_name[name].size, dtype=torch.float) for name in plan}, plan))


def pruned_copy(
    model: nn.Module, input_shape: tuple[int, ...], importance: dict[str, torch.Tensor], plan: dict[str, int]
) -> nn.Module:
    """A copy of ``model`` (in eval mode) in which group ``name`` keeps its ``plan[name]`` most
    important channels (:meth:`ChannelGroups.top`)."""
    model = copy.deepcopy(model).eval()
    groups = ChannelGroups(model, input_shape)
    groups.apply(groups.top(importance, plan))
    return model


def thinned(model: nn.Module, input_shape: tuple[int, ...], share: float) -> nn.Module:
    """A copy of ``model`` with every channel group cut to ``share`` of its channels (at least one):
    a model to time, so that the whole-model calibration spans the range pruned models fall in."""
    model = copy.deepcopy(model)
    groups = ChannelGroups(model, input_shape)
    groups.apply_plan({g.name: g.unit * max(1, round(share * g.size / g.unit)) for g in groups.groups})
    return model


def thinned_cases(case: ModelCase, shares) -> list[ModelCase]:
    """Copies of ``case`` with every channel group cut to each of ``shares`` (named
    ``NAME@thinned:SHARE``), for the whole-model calibration."""
    return [
        ModelCase(f"{case.name}@thinned:{share:g}", thinned(case.model, case.input_shape, share), case.input_shape)
        for share in shares
    ]


def in_steps(step: int) -> str:
    """``", in steps of N"`` for error messages about counts rounded to ``step``; empty for 1."""
    return f", in steps of {step}" if step > 1 else ""


def resized(config: LayerConfig, in_channels: int, out_channels: int) -> LayerConfig:
    """``config`` with new channel counts; a depthwise conv keeps its multiplier and ignores ``out_channels``."""
    if config.op == "depthwise_conv2d":
        multiplier = config.out_channels // config.in_channels
        return replace(config, in_channels=in_channels, out_channels=in_channels * multiplier, groups=in_channels)
    return replace(config, in_channels=in_channels, out_channels=out_channels)
