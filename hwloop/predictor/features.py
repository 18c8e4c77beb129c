"""Features of layer configurations for the latency predictor, computed on whole columns at once.

Latency on a board steps with channel counts: the ``default`` schedules vectorise output channels
(or output width, or a pointwise conv's output positions) by the target's SIMD width and tile
output positions by exact divisors. Beside the plain shape, FLOPs, bytes, arithmetic intensity and
each channel count's alignment, the features are what the rules make of the layer
(:mod:`hwloop.predictor.rules`): its path, register tile, vector multiply-adds, inner steps,
repacked weight, input read with its halo, and the weights one tile walks.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from ..layers import ACTIVATIONS, OPS, WIDTH_FIELDS, LayerConfig
from . import rules

COLUMNS = (
    "op",
    "in_channels",
    "out_channels",
    "input_h",
    "input_w",
    "kernel",
    "kernel_w",
    "stride",
    "padding",
    "padding_w",
    "groups",
    "batch",
    "dtype",
    "activation",
)
ALIGNMENTS = (4, 8, 16, 32)
CHUNK = 1 << 14


def names(lanes: int) -> list[str]:
    """Feature names, in the order of :func:`matrix`'s columns."""
    channel = [
        f"{side}_{what}"
        for side in ("cin", "cout", "cout_per_group")
        for what in (*(f"aligned_{a}" for a in ALIGNMENTS), "aligned_lanes", "mod_lanes", "vectors", "vector_fill")
    ]
    return [
        *(f"op_{op}" for op in OPS),
        "in_channels",
        "out_channels",
        "input_h",
        "input_w",
        "output_h",
        "output_w",
        "kernel",
        "kernel_w",
        "stride",
        "padding",
        "padding_w",
        "groups",
        "batch",
        "dtype_bytes",
        "log_flops",
        "log_bytes",
        "log_intensity",
        "positions_mod_lanes",
        *channel,
        "ow_mod_lanes",
        "ow_vectors",
        "log_positions",
        "log_weight_bytes",
        *(f"path_{path}" for path in rules.PATHS),
        "tile_vectors",
        "tile_accumulators",
        *(f"log_{q}" for q in rules.QUANTITIES[2:]),
        "fmas_per_step",
        "useful_share",
        *(f"activation_{name}" for name in ACTIVATIONS[1:]),
    ]


def arrays(configs: list[LayerConfig]) -> dict[str, np.ndarray]:
    """The columns of ``configs`` as arrays (the input :func:`matrix` takes)."""
    return {c: np.array([getattr(cfg, c) for cfg in configs]) for c in COLUMNS}


def from_frame(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The config columns of a table (or any frame with them) as arrays; a kernel's width and its
    padding's, where a frame has none (rows written before they were recorded), are its height's,
    and its activation none."""
    cols = {c: frame[c].to_numpy() for c in COLUMNS if c not in (*WIDTH_FIELDS, "activation")}
    cols["activation"] = (
        frame.activation.fillna("none").to_numpy() if "activation" in frame else np.full(len(frame), "none")
    )
    for width, height in WIDTH_FIELDS.items():
        given = frame[width].to_numpy(dtype=np.float64, na_value=np.nan) if width in frame else np.nan
        cols[width] = np.where(np.isnan(given), cols[height], given).astype(np.int64)
    return cols


def shape_key(frame: pd.DataFrame) -> pd.Series:
    """A layer's shape apart from its channel counts: op, input size, kernel, stride, padding, activation."""
    cols = from_frame(frame)
    fields = ("input_h", "input_w", "kernel", "kernel_w", "stride", "padding", "padding_w", "activation")
    shape = pd.DataFrame({c: cols[c] for c in fields}, index=frame.index).astype(str).agg("x".join, axis=1)
    return frame.op + ":" + shape


def distinct(cols: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The distinct configs of ``cols`` (in order of first appearance) and, for each row, the
    index of its config among them: a batch from a pruning search repeats configs many times."""
    n = len(cols["op"])
    key, radix = np.zeros(n, dtype=np.int64), 1
    for c in COLUMNS:
        values = np.asarray(cols[c])
        if n == 0 or (values == values[0]).all():
            continue
        if values.dtype.kind in "iu":
            low = int(values.min())
            codes, size = values.astype(np.int64) - low, int(values.max()) - low + 1
        else:
            codes, uniques = pd.factorize(values)
            size = len(uniques)
        if radix * size >= 1 << 62:
            return {c: np.asarray(cols[c]) for c in COLUMNS}, np.arange(n)
        key += codes * radix
        radix *= size
    inverse, uniques = pd.factorize(key)
    first = np.empty(len(uniques), dtype=np.int64)
    first[inverse[::-1]] = np.arange(n - 1, -1, -1)
    return {c: np.asarray(cols[c])[first] for c in COLUMNS}, inverse


def matrix(cols: dict[str, np.ndarray], lanes: int, work: dict[str, np.ndarray]) -> np.ndarray:
    """Feature matrix (float32, XGBoost's own precision), one row per config, for a target with
    ``lanes`` float32 SIMD lanes; ``work`` is :func:`hwloop.predictor.rules.quantities` of the same
    configs. Computed in cache-sized chunks."""
    cols = {c: np.asarray(cols[c]) for c in COLUMNS}
    n = len(cols["op"])
    out = np.empty((n, len(names(lanes))), dtype=np.float32)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = _chunk({c: v[part] for c, v in cols.items()}, lanes, {q: v[part] for q, v in work.items()})
    return out


def _chunk(cols: dict[str, np.ndarray], lanes: int, work: dict[str, np.ndarray]) -> np.ndarray:
    op = cols["op"]
    cin, cout = _int(cols["in_channels"]), _int(cols["out_channels"])
    h, w, kh, kw = _int(cols["input_h"]), _int(cols["input_w"]), _int(cols["kernel"]), _int(cols["kernel_w"])
    s, ph, pw = _int(cols["stride"]), _int(cols["padding"]), _int(cols["padding_w"])
    g, n = _int(cols["groups"]), _int(cols["batch"])
    dtype_bytes = np.where(cols["dtype"] == "float16", 2.0, 4.0)
    oh, ow = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
    cout_g = np.maximum(cout // g, 1)
    # a float16 vector holds twice the float32 lanes
    dlanes = np.where(dtype_bytes == 2.0, 2 * lanes, lanes)

    macs = n * cout * oh * ow * (cin // g) * kh * kw
    weight_bytes = cout * (cin // g) * kh * kw * dtype_bytes
    moved = (n * cin * h * w + n * cout * oh * ow) * dtype_bytes + weight_bytes
    positions = oh * ow

    features = [
        *((op == name).astype(np.float64) for name in OPS),
        cin,
        cout,
        h,
        w,
        oh,
        ow,
        kh,
        kw,
        s,
        ph,
        pw,
        g,
        n,
        dtype_bytes,
        np.log2(2.0 * macs),
        np.log2(moved),
        np.log2(2.0 * macs / moved),
        positions % dlanes,
    ]
    wide = (dlanes != lanes).astype(np.intp)
    for c in (cin, cout, cout_g):
        features.append(_channel_table(lanes, _capacity(int(c.max(initial=0))))[wide, c])
    features += [ow % dlanes, _ceil(ow, dlanes), np.log2(n * positions), np.log2(weight_bytes)]
    features += [
        *(work["path"] == index for index in range(len(rules.PATHS))),
        work["vectors"],
        work["tile"],
        *(np.log2(work[q]) for q in rules.QUANTITIES[2:]),
        work["vector_fmas"] / work["steps"],
        macs / (work["vector_fmas"] * dlanes),
        *(cols["activation"] == name for name in ACTIVATIONS[1:]),
    ]
    return np.column_stack(features)


def _int(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _ceil(a: np.ndarray, b) -> np.ndarray:
    return -(-a // b)


@functools.lru_cache(maxsize=32)
def _channel_table(lanes: int, size: int) -> np.ndarray:
    """Channel features of every count below ``size``, for float32 (``[0]``) and float16 (``[1]``,
    twice the lanes) vectors: alignment to 4/8/16/32 and to the vector width, lanes left over,
    vectors, share of the last vector filled."""
    c = np.arange(size)
    blocks = []
    for width in (lanes, 2 * lanes):
        vectors = _ceil(c, width)
        with np.errstate(invalid="ignore"):
            fill = c / (vectors * width)
        blocks.append(np.column_stack([*(c % a == 0 for a in ALIGNMENTS), c % lanes == 0, c % width, vectors, fill]))
    return np.stack(blocks)


def _capacity(largest: int) -> int:
    """A table size covering ``largest``, rounded up to a power of two so tables are reused."""
    return 1 << max(largest, 1).bit_length()
