"""Whether a device's layer table holds a model's layer shapes: the same kind of layer on the same
input size, kernel, stride and batch (channel counts are what a table samples, so they may differ).
A layer whose shape no row has is priced by the predictor's extrapolation alone."""

from __future__ import annotations

from dataclasses import fields

import pandas as pd

from ..layers import WIDTH_FIELDS, LayerConfig


def shape_of(config: LayerConfig) -> tuple:
    """A layer's shape apart from its channel counts: op, input size, kernel, stride, padding, batch,
    dtype, and whether a conv is grouped (with how many groups)."""
    groups = config.groups if config.op == "conv2d" else 0
    return (
        config.op,
        config.batch,
        config.input_h,
        config.input_w,
        config.kernel,
        config.kernel_w,
        config.stride,
        config.padding,
        config.padding_w,
        groups,
        config.dtype,
    )


def uncovered(layers: list[LayerConfig], rows: pd.DataFrame, schedule: str) -> tuple[list[LayerConfig], int]:
    """The first layer of each of ``layers``' shapes that no successful ``schedule`` row of ``rows``
    has, and how many distinct shapes ``layers`` holds."""
    measured = set()
    if len(rows):
        ok = rows[(rows.status == "ok") & (rows.schedule == schedule)]
        ok = ok.assign(**{w: ok[w].fillna(ok[h]) if w in ok else ok[h] for w, h in WIDTH_FIELDS.items()})
        for row in ok[list(_FIELDS)].drop_duplicates().itertuples(index=False):
            measured.add(
                (
                    row.op,
                    int(row.batch),
                    int(row.input_h),
                    int(row.input_w),
                    int(row.kernel),
                    int(row.kernel_w),
                    int(row.stride),
                    int(row.padding),
                    int(row.padding_w),
                    int(row.groups) if row.op == "conv2d" else 0,
                    row.dtype,
                )
            )
    shapes: dict[tuple, LayerConfig] = {}
    for config in layers:
        shapes.setdefault(shape_of(config), config)
    return [config for shape, config in shapes.items() if shape not in measured], len(shapes)


_FIELDS = tuple(f.name for f in fields(LayerConfig) if f.name not in ("in_channels", "out_channels", "activation"))
