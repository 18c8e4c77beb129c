"""Whether a device's layer table holds a model's layer shapes: the same kind of layer on the same
input size, kernel, stride and batch (channel counts are what a table samples, so they may differ).
A layer whose shape no row has is priced by the predictor's extrapolation alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..layers import LayerConfig
from ..predictor.features import from_frame

SHAPE = ("op", "batch", "input_h", "input_w", "kernel", "kernel_w", "stride", "padding", "padding_w", "groups", "dtype")


def shape_of(config: LayerConfig) -> tuple:
    """A layer's shape apart from its channel counts: op, input size, kernel, stride, padding, batch,
    dtype, and whether a conv is grouped (with how many groups)."""
    return _shapes({name: np.array([getattr(config, name)]) for name in SHAPE})[0]


def uncovered(layers: list[LayerConfig], rows: pd.DataFrame, schedule: str) -> tuple[list[LayerConfig], int]:
    """The first layer of each of ``layers``' shapes that no successful ``schedule`` row of ``rows``
    has, and how many distinct shapes ``layers`` holds."""
    measured = set()
    if len(rows):
        ok = rows[(rows.status == "ok") & (rows.schedule == schedule)]
        measured = set(_shapes(from_frame(ok.drop_duplicates([c for c in SHAPE if c in ok]))))
    shapes: dict[tuple, LayerConfig] = {}
    for config in layers:
        shapes.setdefault(shape_of(config), config)
    return [config for shape, config in shapes.items() if shape not in measured], len(shapes)


def _shapes(cols: dict[str, np.ndarray]) -> list[tuple]:
    """:func:`shape_of` of each config of ``cols`` (config columns as arrays): a grouped conv's groups,
    0 for other ops."""
    groups = np.where(np.asarray(cols["op"]) == "conv2d", np.asarray(cols["groups"], dtype=np.int64), 0)
    return list(zip(*(groups.tolist() if c == "groups" else np.asarray(cols[c]).tolist() for c in SHAPE)))
