"""Cost terms of a pruning plan: the device predictor's whole-model latency, or multiply-accumulates.

Both give the cost of a whole plan (``total``) and of single layers (``layers``, batched), which the
allocator uses to rank many candidate moves at once before checking the whole-model figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..layers import LayerConfig
from .groups import ChannelGroups, PruneError, resized


class Cost:
    """A cost of the layers of a plan. Subclasses give ``layers`` and ``model``."""

    name = "cost"
    unit = ""

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

    def target(self, budget: float) -> float:
        """A budget as a cost: a fraction of the dense cost when below or at 1, else an absolute value."""
        if budget <= 0:
            raise PruneError(f"budget: must be positive, got {budget}")
        return budget * self.total(self.groups.dense) if budget <= 1 else float(budget)


class PredictedLatency(Cost):
    """Latency in ms from the device's predictor (``hwloop.predictor.Predictor``)."""

    name = "latency"
    unit = "ms"

    def __init__(self, groups: ChannelGroups, predictor):
        super().__init__(groups)
        self.predictor = predictor

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

