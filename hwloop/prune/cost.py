"""Cost terms of a pruning plan: the device predictor's whole-model latency, or multiply-accumulates.

Both give the cost of a whole plan (``total``) and of single layers (``layers``, batched), which the
allocator uses to rank many candidate moves at once before checking the whole-model figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..layers import LayerConfig
from .groups import ChannelGroups, PruneError, resized


class Cost:
    """A cost of the layers of a plan. Subclasses give ``layers`` and ``model``."""

    name = "cost"
    unit = ""
    step = 8  # the channel alignment the cost rewards; moves and grids favour its multiples

    def __init__(self, groups: ChannelGroups):
        self.groups = groups
        self._totals: dict[tuple, float] = {}

    def layers(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        raise NotImplementedError

    def model(self, configs: list[LayerConfig]) -> float:
        raise NotImplementedError

    def grid(self, config: LayerConfig, in_counts: Sequence[int], out_counts: Sequence[int]) -> np.ndarray:
        """Layer costs, shape (len(in_counts), len(out_counts)), of ``config`` with its channel counts
        replaced; a depthwise conv's out and group counts follow its in count."""
        configs = [resized(config, i, o) for i in in_counts for o in out_counts]
        return self.layers(configs).reshape(len(in_counts), len(out_counts))

    def total(self, plan: dict[str, int]) -> float:
        """The cost of the whole model pruned to ``plan`` (groups it leaves out stay dense)."""
        key = tuple(plan.get(name, g.size) for name, g in self.groups.by_name.items())
        if key not in self._totals:
            self._totals[key] = float(self.model(self.groups.layers(plan)))
        return self._totals[key]

    def target(self, budget: float | str, dense: float | None = None) -> float:
        """A budget as a cost: a fraction of the dense cost (``0.5``, ``"0.5"``, ``"50%"``) or, with
        the cost's unit as suffix (``"3.2ms"``), an absolute value. ``dense`` replaces the dense
        cost a fraction applies to (a dense latency measured on the board, say)."""
        text = str(budget).strip()
        absolute = bool(self.unit) and text.endswith(self.unit)
        number = text.removesuffix(self.unit) if absolute else text.removesuffix("%")
        try:
            value = float(number) / (100 if text.endswith("%") else 1)
        except ValueError:
            raise PruneError(
                f"budget: {budget!r} is neither a fraction of the dense {self.name} (0.5, 50%) "
                f"nor a value in {self.unit} (such as 3.2{self.unit})"
            ) from None
        if value <= 0 or (not absolute and value > 1):
            raise PruneError(
                f"budget: {budget!r} must be a fraction in (0, 1] of the dense {self.name}, "
                f"or a positive value in {self.unit}"
            )
        return value if absolute else value * (self.total(self.groups.dense) if dense is None else dense)


class PredictedLatency(Cost):
    """Latency in ms from the device's predictor (``hwloop.predictor.Predictor``)."""

    name = "latency"
    unit = "ms"

    def __init__(self, groups: ChannelGroups, predictor):
        super().__init__(groups)
        self.predictor = predictor
        self.step = int(getattr(predictor, "lanes", 0) or self.step)

    def layers(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        return np.asarray(self.predictor.predict(list(configs)), dtype=float)

    def model(self, configs: list[LayerConfig]) -> float:
        return float(self.predictor.predict_model(configs))

    def grid(self, config: LayerConfig, in_counts: Sequence[int], out_counts: Sequence[int]) -> np.ndarray:
        if config.op == "depthwise_conv2d":
            return super().grid(config, in_counts, out_counts)
        return np.asarray(self.predictor.latency_grid(config, list(in_counts), list(out_counts)), dtype=float)


class Macs(Cost):
    """Millions of multiply-accumulates of the conv and linear layers."""

    name = "macs"
    unit = "MMAC"

    def layers(self, configs: Sequence[LayerConfig]) -> np.ndarray:
        return np.array([c.macs / 1e6 for c in configs], dtype=float)

    def model(self, configs: list[LayerConfig]) -> float:
        return float(self.layers(configs).sum())


class SoftCost:
    """A differentiable stand-in for ``cost.total``: each layer's cost interpolated (bilinearly) on a
    grid of its channel counts (aligned ones, which a plan can reach without ragged-count penalties),
    with counts given per group as (possibly fractional) tensors; the whole-model remainder
    (``total`` of the dense plan minus its layers) is added as a constant."""

    def __init__(self, cost: Cost, points: int = 9):
        groups = cost.groups
        feeds_in: dict[str, list[str]] = {}
        feeds_out: dict[str, list[str]] = {}
        for g in groups.groups:
            for name in (*g.consumers, *g.depthwise):
                feeds_in.setdefault(name, []).append(g.name)
            for name in g.producers:
                feeds_out.setdefault(name, []).append(g.name)
        self.sizes = {g.name: g.size for g in groups.groups}
        self.layers = []
        dense_layers = []
        for traced in groups.traced:
            c = traced.config
            ins, outs = feeds_in.get(traced.name, []), feeds_out.get(traced.name, [])
            if c.op == "depthwise_conv2d":
                outs = []
            unit = c.groups if c.op == "conv2d" else 1
            in_points = _points(c.in_channels, cost.step, points, unit) if ins else [c.in_channels]
            out_points = _points(c.out_channels, cost.step, points, unit) if outs else [c.out_channels]
            table = torch.tensor(cost.grid(c, in_points, out_points), dtype=torch.float32)
            self.layers.append(
                (
                    c,
                    ins,
                    outs,
                    torch.tensor(in_points, dtype=torch.float32),
                    torch.tensor(out_points, dtype=torch.float32),
                    table,
                )
            )
            dense_layers.append(c)
        self.offset = cost.total(groups.dense) - float(cost.layers(dense_layers).sum())

    def __call__(self, counts: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.tensor(self.offset)
        for config, ins, outs, in_points, out_points, table in self.layers:
            n_in = config.in_channels - sum(self.sizes[g] - counts[g] for g in ins) if ins else None
            n_out = config.out_channels - sum(self.sizes[g] - counts[g] for g in outs) if outs else None
            total = total + _bilinear(table, in_points, out_points, n_in, n_out)
        return total


def _points(dense: int, step: int, points: int, unit: int = 1) -> list[int]:
    """Grid counts: ``unit`` (a grouped conv's group count, which every count is a multiple of), the
    dense count, and evenly spaced multiples of ``step`` and ``unit`` (counts a device runs well)."""
    step = math.lcm(step, unit)
    aligned = list(range(step, dense, step)) or list(range(unit, dense, unit))
    if len(aligned) > points - 2:
        aligned = [aligned[round(i)] for i in np.linspace(0, len(aligned) - 1, points - 2)]
    return sorted({unit, dense, *aligned})


def _interval(points: torch.Tensor, value) -> tuple[int, torch.Tensor]:
    """The grid cell holding ``value`` and the position within it (0..1, differentiable in ``value``)."""
    value = torch.as_tensor(value, dtype=torch.float32).clamp(points[0], points[-1])
    i = int(torch.searchsorted(points, value.detach()).clamp(1, len(points) - 1)) - 1
    return i, (value - points[i]) / (points[i + 1] - points[i])


def _bilinear(table, in_points, out_points, n_in, n_out) -> torch.Tensor:
    if len(in_points) == 1 or n_in is None:
        rows = [(0, 1.0)]
    else:
        i, a = _interval(in_points, n_in)
        rows = [(i, 1 - a), (i + 1, a)]
    if len(out_points) == 1 or n_out is None:
        cols = [(0, 1.0)]
    else:
        j, b = _interval(out_points, n_out)
        cols = [(j, 1 - b), (j + 1, b)]
    return sum(table[r, c] * wr * wc for r, wr in rows for c, wc in cols)
