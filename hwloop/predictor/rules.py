"""What the ``default`` rules (:mod:`hwloop.schedules.default`) make of a layer, computed on whole
columns at once: which path it takes, the register tile, and the work and traffic of the loops.

Paths: ``channel`` (output channels vectorised over a repacked weight, a register tile of output
positions), ``spatial`` (a pointwise conv's output positions vectorised), ``width`` (depthwise
and small groups: output width vectorised) and ``reduction`` (linear: the reduction vectorised).
Per config: ``vectors`` (vector registers along the vectorised axis in one tile), ``tile``
(accumulators held), ``vector_fmas`` (vector multiply-adds the loops execute, padding included),
``steps`` (passes through the innermost unrolled body), ``loads`` (vector loads and broadcasts
those steps make), ``outputs`` (elements written), ``weight_bytes`` (the repacked weight,
rebuilt on every call), ``input_bytes`` (input read, with the halo each row tile reads again),
``slab_bytes`` (the weights one channel tile walks per output position) and ``tiles`` (outer
iterations); beside them ``exp_outputs`` and ``clip_outputs``, the outputs an activation fused into
the write-back computes an exponential for, or only clips and scales, and ``workspaces``, the
accumulators TVM allocates and frees on every call: a ``local`` buffer, or a ``global`` one of
:data:`STACK_BYTES` or more, is a workspace (a call to allocate and another to free) on every
iteration of the loop it lives in (a tile of one position's accumulator, or a large tile's, per
parallel tile); the rest are on the stack. A padded input of 1 KiB or more is a workspace too (per
parallel tile, or per channel of a depthwise conv), left to the terms of the bytes it copies. The
tile sizes come from the rules' own helpers, evaluated once per distinct shape.
"""

from __future__ import annotations

import functools

import numpy as np

PATHS = ("channel", "spatial", "width", "reduction")
QUANTITIES = (
    "vectors",
    "tile",
    "vector_fmas",
    "steps",
    "loads",
    "outputs",
    "weight_bytes",
    "input_bytes",
    "slab_bytes",
    "tiles",
)


EXP_ACTIVATIONS = ("silu", "sigmoid", "gelu")  # an exponential or erf per output
CLIP_ACTIVATIONS = ("relu", "relu6", "hardswish", "hardsigmoid")  # a few vector operations per output
STACK_BYTES = 1024  # TVM's kMaxStackAlloca: a global buffer below it is on the stack, not a workspace


def accumulators(registers: int) -> int:
    """Vector registers a register tile may hold (the rules' ``CpuModel.accumulators``)."""
    return max(registers // 2, registers - 8)


def quantities(cols: dict[str, np.ndarray], lanes: int, registers: int) -> dict[str, np.ndarray]:
    """``path`` (an index into :data:`PATHS`) and :data:`QUANTITIES` of each config of ``cols``
    (config columns as arrays), for a CPU with ``lanes`` float32 lanes and ``registers`` vector registers."""
    op = np.asarray(cols["op"])
    cin, cout = _int(cols["in_channels"]), _int(cols["out_channels"])
    h, w, kh, kw = _int(cols["input_h"]), _int(cols["input_w"]), _int(cols["kernel"]), _int(cols["kernel_w"])
    s, ph, pw = _int(cols["stride"]), _int(cols["padding"]), _int(cols["padding_w"])
    g, n = _int(cols["groups"]), _int(cols["batch"])
    size = np.where(np.asarray(cols["dtype"]) == "float16", 2, 4)
    vl = np.where(size == 2, 2 * lanes, lanes)
    oh, ow = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
    kk = kh * kw
    cpg, opg, positions = cin // g, np.maximum(cout // g, 1), oh * ow
    acc = accumulators(registers)

    linear = op == "linear"
    pointwise = (kk == 1) & (s == 1) & (ph == 0) & (pw == 0) & (g == 1) & (positions % vl == 0)
    spatial = ~linear & pointwise & (lanes * 32 >= 512) & (n * cin * h * w * size <= _input_cache_bytes())
    channel = ~linear & ~spatial & ((opg % vl == 0) | (g == 1))
    width = ~linear & ~spatial & ~channel
    path = np.select([channel, spatial, width], [0, 1, 2], 3)
    out = {name: np.ones(len(op), dtype=np.float64) for name in QUANTITIES}
    out["outputs"] = (n * cout * positions).astype(np.float64)
    out["workspaces"] = np.zeros(len(op), dtype=np.float64)

    def put(mask, **values):
        for name, value in values.items():
            out[name][mask] = np.asarray(value, dtype=np.float64)[mask] if np.ndim(value) else value

    if channel.any():
        down_columns = (cpg * kk < _tiny_reduction()) & (cout < vl) & (oh > 1)
        tiled = np.where(down_columns, 1, ow)
        budget = np.where(down_columns, np.minimum(acc, _lookup(_column_budget, cout, vl, mask=channel)[0]), acc)
        vectors, rows, columns = _lookup(_register_tile, cout, np.where(oh > 1, oh, 1), tiled, vl, budget, mask=channel)
        tile_width = vl * vectors
        tiles = -(-cout // tile_width)
        weight = tiles * tile_width * cpg * kk * size
        halo = ((rows - 1) * s + kh) * (oh // rows)
        walked_once = weight > _weight_cache_bytes()
        parallel = n * (oh // rows) * np.where(walked_once, tiles, 1)  # walked once, channel tiles too
        accumulator = (rows * columns == 1) | (tile_width * rows * columns * size >= STACK_BYTES)
        put(
            channel,
            vectors=vectors,
            tile=vectors * rows * columns,
            vector_fmas=n * tiles * vectors * positions * cpg * kk,
            steps=n * tiles * (positions // (rows * columns)) * cpg * kk,
            weight_bytes=weight,
            loads=n * tiles * (positions // (rows * columns)) * cpg * kk * (vectors + rows * columns),
            input_bytes=n * cin * np.where(walked_once, h + 2 * ph, halo) * (w + 2 * pw) * size,
            slab_bytes=tile_width * cpg * kk * size,
            tiles=n * tiles * (oh // rows),
            workspaces=parallel * accumulator,
        )
    if spatial.any():
        vectors = _lookup(_divisor_tile, positions // vl, 4, mask=spatial)[0]
        rows = _lookup(_balanced_tile, cout, np.maximum(registers // 2 // vectors, 1), mask=spatial)[0]
        row_tiles, position_tiles = -(-cout // rows), positions // (vectors * vl)
        put(
            spatial,
            vectors=vectors,
            tile=rows * vectors,
            vector_fmas=n * row_tiles * rows * position_tiles * vectors * cin,
            steps=n * row_tiles * position_tiles * cin,
            loads=n * row_tiles * position_tiles * cin * (vectors + rows),
            weight_bytes=cout * cin * size,
            input_bytes=row_tiles * n * cin * positions * size,
            slab_bytes=rows * cin * size,
            tiles=n * row_tiles * position_tiles,
            workspaces=n * row_tiles * position_tiles * (rows * vectors * vl * size >= STACK_BYTES),
        )
    if width.any():
        span = _lookup(_vector_tile, ow, vl, mask=width)[0]
        per_row = -(-span // vl)
        rows = _lookup(_divisor_tile, oh, np.maximum(acc // per_row, 1), mask=width)[0]
        put(
            width,
            vectors=per_row,
            tile=per_row * rows,
            vector_fmas=n * cout * oh * (ow // span) * per_row * cpg * kk,
            steps=n * cout * (oh // rows) * (ow // span) * cpg * kk,
            loads=n * cout * (oh // rows) * (ow // span) * cpg * kk * (rows * per_row + 1),
            weight_bytes=cout * cpg * kk * size,
            input_bytes=n * cin * (h + 2 * ph) * (w + 2 * pw) * size,
            slab_bytes=cpg * kk * size,
            tiles=n * cout,
            workspaces=n * cout * (rows * span * size >= STACK_BYTES),  # one tile's, once a channel
        )
    if linear.any():
        rows = _lookup(_divisor_tile, n, 4, mask=linear)[0]
        columns = _lookup(_balanced_tile, cout, np.maximum(np.minimum(acc // rows, 8), 1), mask=linear)[0]
        tiles = -(-n // rows) * -(-cout // columns)
        put(
            linear,
            vectors=1,
            tile=rows * columns,
            vector_fmas=tiles * rows * columns * -(-cin // vl),
            steps=tiles * np.maximum(cin // vl, 1),
            loads=tiles * -(-cin // vl) * (rows + columns),
            weight_bytes=cout * cin * size,
            input_bytes=n * cin * size,
            slab_bytes=columns * cin * size,
            tiles=tiles,
            workspaces=tiles * (rows * columns * vl * size >= STACK_BYTES),
        )
    activation = np.asarray(cols["activation"])
    out["exp_outputs"] = np.where(np.isin(activation, EXP_ACTIVATIONS), out["outputs"], 0.0)
    out["clip_outputs"] = np.where(np.isin(activation, CLIP_ACTIVATIONS), out["outputs"], 0.0)
    return {"path": path, **out}


def path_names(path: np.ndarray) -> np.ndarray:
    """The names (in :data:`PATHS`) of :func:`quantities`' ``path`` indices."""
    return np.array(PATHS)[path]


def path_counts(names) -> dict[str, int]:
    """How many of ``names`` (path names; "" for none) name each path, by path."""
    names = list(names)
    return {str(path): names.count(path) for path in sorted(set(names) - {""})}


def _int(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _lookup(fn, *args, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """``fn`` (a rule helper on ints) of each masked row's arguments, evaluated once per distinct
    argument tuple; rows outside ``mask`` get 1."""
    n = len(mask)
    columns = [np.broadcast_to(np.asarray(a, dtype=np.int64), (n,))[mask] for a in args]
    key, radix = np.zeros(len(columns[0]), dtype=np.int64), 1
    for column in columns:  # one integer per argument tuple (the arguments are small counts)
        key += column * radix
        radix *= int(column.max(initial=0)) + 1
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    values = np.array([_as_tuple(_cached(fn)(*(int(c[i]) for c in columns))) for i in first], dtype=np.int64)
    result = np.ones((values.shape[1], n), dtype=np.int64)
    result[:, mask] = values[inverse.ravel()].T
    return tuple(result)


@functools.cache
def _cached(fn):
    return functools.lru_cache(maxsize=1 << 16)(fn)


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _rule(name: str):
    """A tile helper of the ``default`` rules (imported on first use: it brings in TVM)."""
    from ..schedules import default

    return getattr(default, name)


def _register_tile(channels: int, rows: int, columns: int, lanes: int, budget: int) -> tuple[int, int, int]:
    return _rule("_register_tile")(channels, rows, columns, lanes, budget)


def _divisor_tile(extent: int, limit: int) -> int:
    return _rule("_divisor_tile")(extent, limit)


def _balanced_tile(extent: int, limit: int) -> int:
    return _rule("_balanced_tile")(extent, limit)


def _vector_tile(extent: int, lanes: int) -> int:
    return _rule("_vector_tile")(extent, lanes)


def _weight_cache_bytes() -> int:
    return _rule("WEIGHT_CACHE_BYTES")


def _input_cache_bytes() -> int:
    return _rule("INPUT_CACHE_BYTES")


def _tiny_reduction() -> int:
    return _rule("TINY_REDUCTION")


def _column_budget(channels: int, lanes: int) -> int:
    return _rule("_column_budget")(channels, lanes)
