"""The ``default`` policy: rule-based schedules, no search.

On CPU (``llvm``) targets, every PrimFunc whose blocks contain a recognised contraction is
scheduled by a fixed rule sized to the target's vector width and register file:

* conv2d NCHW (any kernel, stride, padding; groups whose per-group output channels fill whole
  vectors) and dense/matmul: output channels vectorised, weights repacked to
  ``[O // T, ..., O % T]`` in the packed layout's order (padded, so ragged channel counts
  run whole vectors, the accumulator's rows aligned to the tile), a register tile of output
  positions, reduction innermost-but-two;
* pointwise conv2d (1x1, stride 1, unpadded, ungrouped, positions a multiple of the vector width)
  on 512-bit targets, where its input fits :data:`INPUT_CACHE_BYTES`: a matrix product with output
  positions (rows and columns fused) vectorised and a register tile of channels by positions;
* depthwise and other grouped conv2d: output width vectorised, rows and channels outer;
* dense whose reduction is contiguous in both operands and a multiple of the vector width:
  reduction vectorised through ``rfactor``.

Blocks are recognised by structure (``C[...] += A[...] * B[...]`` with the index patterns of a
conv or a matmul), not by name. Injective blocks that consume the result (bias, scale/shift,
ReLU, residual add) are inlined into the accumulator's write-back; the padding stage is computed
per parallel tile. GPU targets get TVM's dlight GPU rules. Other PrimFuncs are left as they are.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import ScheduleError
from tvm.sym.pattern import detect_linear_equation
from tvm.target import Target, codegen

GPU_KINDS = ("cuda", "nvptx", "rocm", "vulkan", "metal", "opencl", "webgpu")
VECTORIZE_LIMIT = 256  # longest loop vectorised whole (LLVM splits it into registers)
WEIGHT_CACHE_BYTES = 256 * 1024  # packed weights above this are walked once, channel tile outermost
INPUT_CACHE_BYTES = 1024 * 1024  # a pointwise conv's input above this is left to the channel rule
TINY_REDUCTION = 8  # multiply-adds per output below which LLVM unrolls a reduction into one vector whole
COLUMN_WRITEBACK_VECTORS = 8  # vectors' worth of outputs a tile down a column writes back, at most
REPACK_ROWS = 8  # weight rows a repack gathers from at once (common L1 caches have 8 ways or more)


@dataclass(frozen=True)
class CpuModel:
    """What the rules need to know about a CPU: SIMD register width and count."""

    vector_bits: int
    registers: int

    def lanes(self, dtype: str) -> int:
        return max(self.vector_bits // tvm.runtime.DataType(dtype).bits, 1)

    @property
    def accumulators(self) -> int:
        """Vector registers a register tile may hold, leaving room for operands (eight of 32)."""
        return max(self.registers // 2, self.registers - 8)


def cpu_model(target: Target | dict) -> CpuModel:
    """The SIMD width and register count of an ``llvm`` target, from its mtriple, mcpu and mattr."""
    target = _as_target(target)
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    arch = triple.split("-")[0]
    if arch in ("aarch64", "arm64", "aarch64_be"):
        return CpuModel(128, 32)
    if arch in ("x86_64", "i386", "i686"):
        if codegen.llvm_cpu_has_features(["avx512f"], target):
            return CpuModel(512, 32)
        if codegen.llvm_cpu_has_features(["avx"], target):
            return CpuModel(256, 16)
    return CpuModel(128, 16)


def vector_lanes(target: Target | dict, dtype: str = "float32") -> int:
    """Elements of ``dtype`` in one SIMD register of ``target``."""
    return cpu_model(target).lanes(dtype)


def schedule(mod: tvm.IRModule, target: Target | dict) -> tvm.IRModule:
    """``mod`` with every recognised PrimFunc scheduled for ``target``; others unchanged."""
    target = _as_target(target)
    if target.kind.name in GPU_KINDS:
        return _schedule_gpu(mod, target)
    if target.kind.name != "llvm":
        return mod
    cpu = cpu_model(target)
    out = mod.clone()
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled", False):
            scheduled = schedule_func(func, cpu)
            if scheduled is not None:
                out[gvar] = scheduled
    return out


def schedule_func(func: tirx.PrimFunc, cpu: CpuModel) -> tirx.PrimFunc | None:
    """``func`` scheduled by the CPU rules, or None if no block in it is recognised."""
    sch = s_tir.Schedule(func)
    found = [c for c in (_contraction(sch, b) for b in sch.get_child_blocks(sch.get_sblock("root"))) if c]
    if not found:
        return None
    try:
        for contraction in found:
            _schedule_contraction(sch, contraction, cpu)
    except ScheduleError as exc:
        warnings.warn(
            f"default schedule: left {func.attrs.get('global_symbol', 'a PrimFunc')} "
            f"unscheduled: {str(exc).splitlines()[-1]}",
            stacklevel=2,
        )
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _as_target(target: Target | dict) -> Target:
    return target if isinstance(target, Target) else Target(target)


def _schedule_gpu(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    from tvm.s_tir import dlight as dl

    rules = dl.ApplyDefaultSchedule(
        dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
    )
    with target:
        return rules(mod.clone())


# --- recognition --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contraction:
    """A block ``out[s...] += a[...] * b[...]`` over spatial iters ``s`` and reduction iters ``r``."""

    block: s_tir.schedule.SBlockRV
    loops: dict  # block iter var -> its loop
    extents: dict  # block iter var -> int extent
    spatial: tuple  # spatial iter vars, block order
    reduce: tuple  # reduction iter vars, block order
    out: tuple  # output indices (iter vars)
    operands: tuple  # the two multiplied BufferLoads
    dtype: str

    def vars_of(self, load: tvm.ir.TensorLoad, dim: int) -> set:
        return {v for v in tirx.analysis.undefined_vars(load.indices[dim]) if v in self.extents}

    def read_index(self, load: tvm.ir.TensorLoad, sch: s_tir.Schedule) -> int:
        reads = sch.get(self.block).reads
        return next(i for i, r in enumerate(reads) if r.source.same_as(load.source))


def _contraction(sch: s_tir.Schedule, block) -> Contraction | None:
    stmt = sch.get(block)
    body = stmt.body
    if stmt.init is None or len(stmt.writes) != 1 or not isinstance(body, tirx.BufferStore):
        return None
    value = body.value
    if not isinstance(value, tirx.Add):
        return None
    acc, product = value.a, value.b
    if not _same_load(acc, body):
        acc, product = product, acc
    if not _same_load(acc, body) or not isinstance(product, tirx.Mul):
        return None
    operands = (product.a, product.b)
    if not all(isinstance(o, tvm.ir.TensorLoad) and o.source.dtype == body.buffer.dtype for o in operands):
        return None
    loops = sch.get_loops(block)
    bindings = _block_realize(sch, block).iter_values
    if len(loops) != len(stmt.iter_vars):
        return None
    iters, extents = {}, {}
    for loop, iv, binding in zip(loops, stmt.iter_vars, bindings):
        loop_stmt = sch.get(loop)
        if not binding.same_as(loop_stmt.loop_var) or not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        if iv.iter_type not in (tirx.IterVar.DataPar, tirx.IterVar.CommReduce):
            return None
        iters[iv.var] = loop
        extents[iv.var] = int(iv.dom.extent)
    spatial = tuple(iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.DataPar)
    reduce = tuple(iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce)
    out = tuple(body.indices)
    if not reduce or not all(map(_is_var, out)) or len(set(out)) != len(out) or set(out) != set(spatial):
        return None
    return Contraction(block, iters, extents, spatial, reduce, out, operands, str(body.buffer.dtype))


def _same_load(expr, store: tirx.BufferStore) -> bool:
    return (
        isinstance(expr, tvm.ir.TensorLoad)
        and expr.source.same_as(store.buffer)
        and len(expr.indices) == len(store.indices)
        and all(a.same_as(b) for a, b in zip(expr.indices, store.indices))
    )


def _block_realize(sch, block):
    return tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block)


def _is_var(expr) -> bool:
    return isinstance(expr, tirx.Var)


@dataclass(frozen=True)
class ConvRoles:
    """The iters of an NCHW conv2d contraction and its data/weight operands."""

    n: tirx.Var
    f: tirx.Var
    y: tirx.Var
    x: tirx.Var
    rc: tirx.Var
    data: tvm.ir.TensorLoad
    weight: tvm.ir.TensorLoad
    out_per_group: int  # output channels sharing one input-channel group (Cout if groups == 1)
    stride: int  # of the width axis


def _conv_roles(c: Contraction) -> ConvRoles | None:
    """The roles of an NCHW/OIHW conv2d: ``out[n,f,y,x] += data[n, g(f)+rc, y*s+ry, x*s+rx] * w[f,rc,ry,rx]``."""
    if len(c.out) != 4 or len(c.reduce) != 3:
        return None
    n, f, y, x = c.out
    for weight, data in (c.operands, c.operands[::-1]):
        idx = weight.indices
        if len(idx) != 4 or len(data.indices) != 4 or not all(map(_is_var, idx)) or not idx[0].same_as(f):
            continue
        rc, ry, rx = idx[1], idx[2], idx[3]
        if {rc, ry, rx} != set(c.reduce):
            continue
        dims = [c.vars_of(data, d) for d in range(4)]
        if dims[0] != {n} or rc not in dims[1] or not dims[1] <= {rc, f}:
            continue
        if dims[2] != {y, ry} and not (dims[2] == {y} and c.extents[ry] == 1):
            continue
        if dims[3] != {x, rx} and not (dims[3] == {x} and c.extents[rx] == 1):
            continue
        in_channels = int(data.source.shape[1])
        groups = in_channels // c.extents[rc] if f in dims[1] else 1
        stride = int(detect_linear_equation(data.indices[3], [x])[0])
        return ConvRoles(n, f, y, x, rc, data, weight, c.extents[f] // max(groups, 1), stride)
    return None


@dataclass(frozen=True)
class MatmulRoles:
    """``out[i, j] += a[i|k] * b[j|k]``: ``j`` is the output's last axis, ``b`` the operand holding it."""

    i: tirx.Var
    j: tirx.Var
    k: tirx.Var
    a: tvm.ir.TensorLoad
    b: tvm.ir.TensorLoad


def _matmul_roles(c: Contraction) -> MatmulRoles | None:
    if len(c.out) != 2 or len(c.reduce) != 1:
        return None
    i, j = c.out
    k = c.reduce[0]
    for a, b in (c.operands, c.operands[::-1]):
        if all(map(_is_var, [*a.indices, *b.indices])) and set(a.indices) == {i, k} and set(b.indices) == {j, k}:
            return MatmulRoles(i, j, k, a, b)
    return None


# --- rules ---------------------------------------------------------------------------------------


def _schedule_contraction(sch: s_tir.Schedule, c: Contraction, cpu: CpuModel) -> None:
    conv = _conv_roles(c)
    if conv is not None:
        if _positions_vectorised(c, conv, cpu):
            _spatial_vector(sch, c, conv, cpu)
        elif conv.out_per_group % cpu.lanes(c.dtype) == 0 or conv.out_per_group == c.extents[conv.f]:
            down_columns = _tiny_reduction(c, conv, cpu)
            _channel_vector(sch, c, conv.f, conv.weight, conv.x, cpu, conv.data, down_columns)
        else:
            _width_vector(sch, c, conv, cpu)
        return
    mm = _matmul_roles(c)
    if mm is None:
        return
    contiguous = mm.a.indices[-1].same_as(mm.k) and mm.b.indices[-1].same_as(mm.k)
    if contiguous:
        _reduction_vector(sch, c, mm, cpu)
    else:
        _channel_vector(sch, c, mm.j, mm.b, mm.i, cpu, None)


def _tiny_reduction(c: Contraction, conv: ConvRoles, cpu: CpuModel) -> bool:
    """Whether a conv's reduction is shorter than :data:`TINY_REDUCTION` into less than one vector of
    output channels. LLVM unrolls such a reduction whole, fuses a tile's inputs along a row (a
    stride apart) into vector loads and shuffles their lanes out: its register tile runs down a
    column instead, where the inputs lie a row apart and each stays a broadcast operand of its
    multiply-add."""
    depth = math.prod(c.extents[r] for r in c.reduce)
    return depth < TINY_REDUCTION and c.extents[conv.f] < cpu.lanes(c.dtype)


def _column_budget(channels: int, lanes: int) -> int:
    """Accumulators a tile down a column of ``channels`` (under one vector) may hold."""
    return max(COLUMN_WRITEBACK_VECTORS * lanes // channels, 1)


def _channel_vector(sch, c: Contraction, f, weight, inner, cpu: CpuModel, data, down_columns: bool = False) -> None:
    """Vectorise output channel ``f`` over a padded repacked weight, with a register tile of
    output positions (the output's other axes; ``inner`` is their innermost, tiled by divisors,
    or untiled where the tile runs ``down_columns``). A tile down a column writes each output to
    another row: above :data:`COLUMN_WRITEBACK_VECTORS` vectors' worth of them, LLVM turned its
    write-back into AVX-512 scatters (a 1x1 conv 4 -> 12 on a 14x14 map ran 1.8 times as long as
    4 -> 9), so its rows are tiled to stay below.

    Small weights stay in cache while rows of output stream past them (the data's producer is
    computed per row, or inlined where it only copies); large weights are walked once, channel
    tile outermost. The accumulator of a tile of one position stays a workspace (``local``): its
    write-back reads one element at a time, and LLVM split such a buffer on the stack into
    scalars, gathered back into vectors on every step of the reduction (8 % slower).
    """
    block, lanes = c.block, cpu.lanes(c.dtype)
    positions = [v for v in c.out if not v.same_as(f)]
    rows = (
        positions[-2] if len(positions) > 1 and c.extents[positions[-2]] > 1 and inner.same_as(positions[-1]) else None
    )
    column = down_columns and rows is not None
    budget = min(cpu.accumulators, _column_budget(c.extents[f], lanes)) if column else cpu.accumulators
    vectors, row_tile, col_tile = _register_tile(
        c.extents[f], c.extents[rows] if rows is not None else 1, 1 if column else c.extents[inner], lanes, budget
    )
    width = lanes * vectors
    f_dim = [d for d, v in enumerate(weight.indices) if v.same_as(f)][0]
    f_out = [d for d, v in enumerate(c.out) if v.same_as(f)][0]

    def pack(*idx):
        return (idx[f_dim] // width, *idx[:f_dim], *idx[f_dim + 1 :], idx[f_dim] % width)

    packed = sch.cache_read(block, c.read_index(weight, sch), "global")
    sch.transform_layout(packed, ("write", 0), pack, pad_value=0.0)
    packed_bytes = _bytes(sch.get(packed).writes[0].source)
    _walk_in_layout(sch, packed, f_dim, width, lanes)
    _accumulate_locally(
        sch,
        c,
        lambda *idx: (*idx[:f_out], *idx[f_out + 1 :], idx[f_out]),
        "local" if row_tile * col_tile == 1 else "global",
    )
    if len(c.out) > 1:  # whole vectors per position, even for a ragged last channel tile
        sch.storage_align(block, 0, axis=len(c.out) - 2, factor=width, offset=0)

    fo, fi = sch.split(c.loops[f], [None, width], disable_predication=True)
    tiled = []
    if rows is not None:
        ro, ri = sch.split(c.loops[rows], [None, row_tile])
        tiled.append((ro, ri))
    xo, xi = sch.split(c.loops[inner], [None, col_tile])
    outer = [c.loops[v] for v in positions if not v.same_as(inner) and (rows is None or not v.same_as(rows))]
    outer += [o for o, _ in tiled]
    reductions = [c.loops[r] for r in c.reduce]
    register_tile = [i for _, i in tiled] + [xi]
    if packed_bytes > WEIGHT_CACHE_BYTES or not outer:
        sch.reorder(fo, *outer, xo, *reductions, *register_tile, fi)
        parallel = sch.fuse(fo, *outer)
    else:
        sch.reorder(*outer, fo, xo, *reductions, *register_tile, fi)
        parallel = sch.fuse(*outer)
    sch.parallel(parallel)
    fv, fl = sch.split(fi, [vectors, lanes])
    for loop in [*register_tile, fv]:
        sch.unroll(loop)
    sch.vectorize(fl)
    # the accumulator keeps channels innermost, the output keeps positions innermost: vectorised
    # along positions, the write-back's stores are contiguous whatever the channel count (left to
    # LLVM, a tile's write-back became scatters or scalar stores by its number of channels)
    writeback = _writeback_at(sch, block, xo)
    sch.vectorize(sch.get_loops(writeback)[-1])
    sch.decompose_reduction(block, reductions[0])
    if data is not None:
        producer = _producer(sch, block, data)
        if producer is not None and _copies(sch, producer):
            sch.compute_inline(producer)
        elif producer is not None:
            _compute_producer_at(sch, producer, None if packed_bytes > WEIGHT_CACHE_BYTES else parallel)


def _walk_in_layout(sch, packed, f_dim: int, width: int, lanes: int) -> None:
    """Loop the repack in its packed layout's order, channel tile outermost and parallel, writes
    contiguous.

    Where the channels are the source's innermost axis, a tile is copied row by row. Otherwise the
    tile is walked a few channels at a time (one vector of writes, gathered from that many weight
    rows), along all the other axes: each cache line read serves a line's worth of steps, and at
    most :data:`REPACK_ROWS` lines are live, within the ways of one L1 set even where the rows lie
    a multiple of 4 KiB apart. A whole tile of rows at once fell in a few sets where rows are a
    multiple of 1 KiB (256 input channels): those layers ran two to six times as long. The groups
    of channels, parallel, are looped apart by what they hold (:func:`_unguard`): clamping every
    lane of a padded tile ran a 672 -> 168 1x1 conv in twice the time of 672 -> 160.
    ``transform_layout`` rebuilds the loops in the packed order only when it pads; an unpadded
    repack keeps the source's order. Either way the block is regrouped so that its first variable
    is the group: ``loop_partition`` gives each piece its own block variables only where a block
    variable is bound to the partitioned loop itself.
    """
    loops, dims = sch.get_loops(packed), len(sch.get(packed).writes[0].source.shape) - 1
    if f_dim == dims - 1:
        if len(loops) == dims:
            fo, fi = sch.split(loops[f_dim], [None, width])
            sch.reorder(fo, *[loop for d, loop in enumerate(loops) if d != f_dim], fi)
        sch.parallel(sch.get_loops(packed)[0])
        return
    per_group = min(lanes, REPACK_ROWS)
    if len(loops) == dims:  # iterated in the source's order

        def regroup(*v):
            return (v[f_dim] // per_group, *v[:f_dim], *v[f_dim + 1 :], v[f_dim] % per_group)
    else:  # in the packed order: tile, the other axes, channel within the tile

        def regroup(*v):
            return (v[0] * (width // per_group) + v[-1] // per_group, *v[1:-1], v[-1] % per_group)

    iters = sch.get(packed).iter_vars
    sch.transform_block_layout(
        packed, tirx.IndexMap.from_func(regroup, ndim=len(iters), index_dtype=str(iters[0].var.ty))
    )
    group = sch.get_loops(packed)[0]
    channels = int(sch.get(packed).reads[0].source.shape[f_dim])
    filled, touched, total = channels // per_group, -(-channels // per_group), int(sch.get(group).extent)
    kinds = ((filled, "plain"), (touched - filled, "clamped"), (total - touched, "zero"))
    spans = [(n, kind) for n, kind in kinds if n]
    pieces = sch.loop_partition(group, [n for n, _ in spans[:-1]] + [None]) if len(spans) > 1 else [group]
    for piece, (_, kind) in zip(pieces, spans):
        for block in sch.get_child_blocks(piece):
            _unguard(sch, block, f_dim, kind)
            sch.vectorize(sch.get_loops(block)[-1])
        sch.parallel(piece)


def _unguard(sch, part, f_dim: int, kind: str) -> None:
    """Replace a padded repack's guarded load, which TVM's vectoriser runs one lane at a time: by a
    plain load (``plain``), by a load of the last channel for the padded lanes (``clamped``: its
    index clamped; those lanes are never written back) or by zeros (``zero``). With a select of
    zero over a clamped load, the built kernel read past the weight (its sessions crashed on a
    40 -> 8 conv)."""
    block = sch.get(part)
    store = block.body
    if not (isinstance(store.value, tvm.ir.Call) and store.value.op.same_as(tvm.ir.Op.get("prim.if_then_else"))):
        return  # unpadded: a plain copy
    pad, load = store.value.args[1], store.value.args[2]
    indices = list(load.indices)
    if kind == "clamped":
        indices[f_dim] = tirx.Min(indices[f_dim], load.source.shape[f_dim] - 1)
    value = pad if kind == "zero" else tirx.BufferLoad(load.source, indices)
    replaced = s_tir.SBlock(
        block.iter_vars,
        block.reads,
        block.writes,
        block.name_hint,
        tirx.BufferStore(store.buffer, value, store.indices),
        block.init,
        block.alloc_buffers,
        block.match_buffers,
        block.annotations,
    )
    sch.state.replace(sch.get_sref(part), replaced, {block: replaced})


def _positions_vectorised(c: Contraction, conv: ConvRoles, cpu: CpuModel) -> bool:
    """Whether a conv takes :func:`_spatial_vector`: a 1x1, stride-1, unpadded, ungrouped conv whose
    output positions fill whole vectors, on a 512-bit target, its input within
    :data:`INPUT_CACHE_BYTES` (each tile of output channels streams the input again). There it
    ran faster than the channel rule (``docs/results/schedules``); on larger inputs, and with 16
    vector registers (AVX2, SSE) from 14x14 on, it ran slower."""
    taps = [r for r in c.reduce if not r.same_as(conv.rc)]
    positions = c.extents[conv.y] * c.extents[conv.x]
    return (
        cpu.vector_bits >= 512
        and all(a.same_as(b) for a, b in zip(c.extents, c.out))  # the block's iters start n, f, y, x
        and conv.stride == 1
        and conv.out_per_group == c.extents[conv.f]
        and all(c.extents[r] == 1 for r in taps)
        and c.vars_of(conv.data, 2) - set(taps) == {conv.y}
        and int(conv.data.source.shape[3]) == c.extents[conv.x]
        and positions % cpu.lanes(c.dtype) == 0
        and _bytes(conv.data.source) <= INPUT_CACHE_BYTES
    )


def _spatial_vector(sch, c: Contraction, conv: ConvRoles, cpu: CpuModel) -> None:
    """Pointwise conv as ``out[f, p] += w[f, c] * data[c, p]``: output positions ``p`` (rows and
    columns fused, contiguous in data and output) vectorised, a register tile of output channels
    by position vectors, each weight broadcast once per tile row. The accumulator, the contraction
    and the write-back iterate the fused positions, so that a tile writes back exactly the
    positions it computed, whether or not it ends within a row."""
    block, lanes = c.block, cpu.lanes(c.dtype)
    producer = _producer(sch, block, conv.data)
    if producer is not None:
        sch.compute_inline(producer)
    writeback = _accumulate_locally(sch, c, None)
    width = c.extents[conv.x]
    sch.transform_layout(block, ("write", 0), lambda n, f, y, x: (n, f, y * width + x))
    sch.transform_block_layout(writeback, lambda n, f, y, x: (n, f, y * width + x))
    sch.transform_block_layout(block, lambda n, f, y, x, rc, ry, rx: (n, f, y * width + x, rc, ry, rx))
    n, f, p, *reductions = sch.get_loops(block)
    vectors = _divisor_tile(c.extents[conv.y] * width // lanes, 4)
    # a register tile of channel rows by position vectors, half the registers: data vectors stay in them too
    rows = _balanced_tile(c.extents[conv.f], max(cpu.registers // 2 // vectors, 1))
    po, pv, pl = sch.split(p, [None, vectors, lanes])
    fo, fi = sch.split(f, [None, rows])
    sch.reorder(n, fo, po, *reductions, fi, pv, pl)
    parallel = sch.fuse(n, fo, po)
    sch.parallel(parallel)
    sch.unroll(fi)
    sch.unroll(pv)
    sch.vectorize(pl)
    writeback = _writeback_at(sch, block, parallel)
    sch.vectorize(sch.split(sch.get_loops(writeback)[-1], [None, lanes])[-1])
    sch.decompose_reduction(block, reductions[0])


def _width_vector(sch, c: Contraction, conv: ConvRoles, cpu: CpuModel) -> None:
    """Vectorise output width; channels and rows outer (depthwise, small groups)."""
    block, lanes = c.block, cpu.lanes(c.dtype)
    _accumulate_locally(sch, c, None)
    width = c.extents[conv.x]
    xv_size = _vector_tile(width, lanes)
    xo, xv = sch.split(c.loops[conv.x], [None, xv_size])
    per_row = -(-xv_size // lanes)
    yo, yi = _split_tile(sch, c.loops[conv.y], c.extents[conv.y], max(cpu.accumulators // per_row, 1))
    reductions = [c.loops[r] for r in c.reduce]
    n, f = c.loops[conv.n], c.loops[conv.f]
    sch.reorder(n, f, yo, xo, *reductions, yi, xv)
    parallel = sch.fuse(n, f)
    sch.parallel(parallel)
    for r in reductions:
        if c.extents[_var_of(c, r)] <= 7:
            sch.unroll(r)
    sch.unroll(yi)
    sch.vectorize(xv)
    wb = _writeback_at(sch, block, xo)
    sch.vectorize(sch.get_loops(wb)[-1])
    sch.decompose_reduction(block, reductions[0])
    producer = _producer(sch, block, conv.data)
    if producer is not None:
        if conv.stride > 1:
            s = conv.stride
            sch.transform_layout(producer, ("write", 0), lambda *i: (*i[:-1], i[-1] % s, i[-1] // s), pad_value=0.0)
        _compute_producer_at(sch, producer, parallel, conv.stride)


def _reduction_vector(sch, c: Contraction, mm: MatmulRoles, cpu: CpuModel) -> None:
    """Dense with a contiguous reduction: ``k`` split by the vector width and rfactored; a ragged
    ``k`` gets a scalar tail (the reduction loop is partitioned at lowering)."""
    block, lanes = c.block, cpu.lanes(c.dtype)
    _accumulate_locally(sch, c, None)
    i_tile = _divisor_tile(c.extents[mm.i], 4)
    j_tile = max(min(cpu.accumulators // i_tile, 8), 1)
    io, ii = sch.split(c.loops[mm.i], [None, i_tile])
    jo, ji = sch.split(c.loops[mm.j], [None, _balanced_tile(c.extents[mm.j], j_tile)])
    ko, kv = sch.split(c.loops[mm.k], [None, lanes])
    sch.reorder(io, jo, ko, ii, ji, kv)
    rf = sch.rfactor(kv, factor_axis=2)
    io, jo, ko, ii, ji, kv = sch.get_loops(rf)
    parallel = sch.fuse(io, jo)
    sch.parallel(parallel)
    sch.reverse_compute_at(block, parallel)
    _writeback_at(sch, block, parallel)
    sch.set_scope(rf, 0, "global")
    sch.unroll(ii)
    sch.unroll(ji)
    sch.vectorize(kv)
    if c.extents[mm.k] % lanes:
        sch.annotate(ko, "pragma_loop_partition_hint", 1)
    sch.decompose_reduction(rf, ko)


# --- helpers -------------------------------------------------------------------------------------


def _var_of(c: Contraction, loop) -> tirx.Var:
    return next(v for v, each in c.loops.items() if each.same_as(loop))


def _accumulate_locally(sch, c: Contraction, layout, scope: str = "global"):
    """Accumulate in a buffer of ``scope`` (``layout`` orders its axes); inline injective consumers
    of the result's shape into its write-back. TVM allocates a ``local`` buffer, or a ``global`` one
    of 1 KiB or more, as a workspace, with a call to allocate and another to free on every iteration
    of the loop it lives in (every channel of a depthwise conv): a ``global`` one below 1 KiB is on
    the stack."""
    writeback = sch.cache_write(c.block, 0, scope)
    if layout is not None:
        sch.transform_layout(c.block, ("write", 0), layout)
    shape = [int(d) for d in sch.get(writeback).writes[0].source.shape]
    while True:
        consumers = sch.get_consumers(writeback)
        if len(consumers) != 1 or [int(d) for d in sch.get(consumers[0]).writes[0].source.shape] != shape:
            break  # a consumer that broadcasts the result (squeeze-excitation's scale) stays a block of its own
        try:
            sch.reverse_compute_inline(consumers[0])
        except ScheduleError:
            break
    return writeback


def _writeback_at(sch, block, loop):
    """Move the accumulator's write-back (the block consuming ``block``) under ``loop``."""
    (writeback,) = sch.get_consumers(block)
    sch.reverse_compute_at(writeback, loop)
    return writeback


def _producer(sch, block, load: tvm.ir.TensorLoad):
    """The injective block producing ``load``'s buffer (the padding stage), if any."""
    for producer in sch.get_producers(block):
        stmt = sch.get(producer)
        if any(w.source.same_as(load.source) for w in stmt.writes):
            return producer if all(iv.iter_type == tirx.IterVar.DataPar for iv in stmt.iter_vars) else None
    return None


def _copies(sch, producer) -> bool:
    """Whether ``producer`` only copies its input (the padding stage of an unpadded conv)."""
    return isinstance(sch.get(producer).body.value, tvm.ir.TensorLoad)


def _compute_producer_at(sch, producer, loop, stride: int = 1) -> None:
    """Compute ``producer`` under ``loop`` (or at the root, in parallel, if None); a padding stage
    is split into a zero fill and a branch-free copy, both vectorised along their innermost axis.
    A stage with no loop of its own under ``loop`` (one element a tile) is left scalar.
    With ``stride > 1`` the producer's buffer has been de-interleaved
    (``w -> (w % stride, w // stride)``), so that axis is walked phase by phase."""
    if loop is not None:
        sch.compute_at(producer, loop)
    blocks = [producer]
    below = _loops_below(sch, producer, loop)
    if below and sch.can_decompose_padding(producer, below[0]):
        blocks.append(sch.decompose_padding(producer, below[0]))
    for block in blocks:
        below = _loops_below(sch, block, loop)
        if not below:
            continue
        inner = below[-1]
        if stride > 1:
            outer, phase = sch.split(inner, [None, stride])
            sch.reorder(phase, outer)
            inner = outer
        if int(sch.get(inner).extent) <= VECTORIZE_LIMIT:
            sch.vectorize(inner)
        if loop is None and len(below) > 1:
            sch.parallel(below[0])


def _loops_below(sch, block, loop) -> list:
    """``block``'s loops nested under ``loop`` (all of them if ``loop`` is None)."""
    loops = sch.get_loops(block)
    if loop is None:
        return loops
    anchor = sch.get_sref(loop)
    return loops[1 + next(i for i, each in enumerate(loops) if sch.get_sref(each).same_as(anchor)) :]


def _divisor_tile(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def _split_tile(sch, loop, extent: int, limit: int):
    """Split ``loop`` by the largest divisor of ``extent`` up to ``limit``."""
    return sch.split(loop, [None, _divisor_tile(extent, max(limit, 1))])


def _balanced_tile(extent: int, limit: int) -> int:
    """The largest divisor of ``extent`` up to ``limit`` if it reaches half of it, else the
    smallest tile that covers ``extent`` in as many steps as ``limit`` would."""
    tile = _divisor_tile(extent, limit)
    if tile * 2 > limit or extent <= limit:
        return tile
    return -(-extent // -(-extent // limit))


def _register_tile(channels: int, rows: int, cols: int, lanes: int, budget: int) -> tuple[int, int, int]:
    """``(vectors, row_tile, col_tile)`` for a tile of ``vectors * lanes`` channels by
    ``row_tile x col_tile`` positions (exact divisors) holding at most ``budget`` accumulators.

    Scored by the useful share of the padded channels times the FMA share of an inner step
    (``v * p`` FMAs against ``v + p`` loads, plus a fixed overhead).
    """
    best = None
    for vectors in range(1, max(budget // 4, 1) + 1):
        used = channels / (-(-channels // (lanes * vectors)) * lanes * vectors)
        for row_tile in (d for d in range(1, rows + 1) if rows % d == 0):
            for col_tile in (d for d in range(1, cols + 1) if cols % d == 0):
                tile = row_tile * col_tile
                if vectors * tile > budget:
                    continue
                score = used * vectors * tile / (max(vectors * tile, vectors + tile) + 2)
                key = (round(score, 6), col_tile, -vectors)
                if best is None or key > best[0]:
                    best = (key, (vectors, row_tile, col_tile))
    return best[1]


def _bytes(buffer) -> int:
    size = tvm.runtime.DataType(buffer.dtype).bits // 8
    for dim in buffer.shape:
        size *= int(dim)
    return size


def _vector_tile(extent: int, lanes: int) -> int:
    """A width tile for ``extent``: the divisor up to four vectors wasting the fewest lanes."""
    candidates = [d for d in range(1, min(extent, 4 * lanes) + 1) if extent % d == 0]
    return min(candidates, key=lambda d: (-(-d // lanes) * lanes / d, -d))
