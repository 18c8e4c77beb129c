import re
import warnings

import numpy as np
import pytest
import tvm
from lowering import lowered_script

from hwloop.kernels import prim_module, random_inputs, reference, relative_error, tolerance
from hwloop.layers import LayerConfig
from hwloop.schedules.default import REPACK_ROWS, cpu_model, schedule, vector_lanes


def conv(cin, cout, size, kernel=3, stride=1, groups=1, op="conv2d"):
    return LayerConfig(op, cin, cout, size, size, kernel=kernel, stride=stride, padding=kernel // 2, groups=groups)


CONFIGS = [
    # output channels around the vector widths (4, 8, 16 fp32 lanes) and the register tile
    *(conv(16, cout, 9) for cout in (1, 3, 15, 16, 17, 24, 33, 64, 67)),
    *(conv(cin, 24, 7) for cin in (1, 3, 13)),  # ragged input channels
    conv(8, 20, 7, kernel=1),
    conv(8, 20, 11, kernel=5),
    conv(4, 12, 13, kernel=7),
    conv(8, 20, 8, kernel=1),
    conv(24, 17, 4, kernel=1),
    conv(256, 20, 3, kernel=1),  # weight rows of 1 KiB
    conv(512, 24, 2),
    conv(13, 40, 16, kernel=1),
    conv(3, 5, 12, kernel=1),
    # pointwise on AVX-512: position tiles ending mid-row (28 and 12 wide), two images, half precision
    LayerConfig("conv2d", 16, 24, 28, 28, kernel=1, activation="relu"),
    LayerConfig("conv2d", 20, 9, 12, 12, kernel=1, batch=2),
    LayerConfig("conv2d", 16, 40, 8, 8, kernel=1, dtype="float16"),
    # reductions shorter than 8 into less than a vector of channels: register tiles down a column
    conv(7, 4, 14, kernel=1),
    conv(5, 16, 7, kernel=1),
    conv(3, 2, 9, kernel=1),
    conv(1, 8, 1, kernel=1),  # one input element a tile: its copy has no loop of its own
    LayerConfig("conv2d", 1, 24, 2, 2, kernel=1, stride=2),
    conv(3, 17, 15, stride=2),
    conv(16, 32, 14, kernel=1, stride=2),
    conv(8, 8, 10, kernel=7, stride=2),
    conv(8, 12, 9, groups=4),
    conv(32, 64, 7, groups=2),
    conv(12, 36, 6, kernel=1, groups=3),
    # grouped convs of ResNeXt (4 channels a group) and RegNet (16 a group, and 12 once pruned alike in each)
    conv(128, 128, 6, groups=32),
    conv(400, 400, 4, groups=25),
    conv(300, 300, 4, groups=25),
    conv(13, 13, 10, groups=13, op="depthwise_conv2d"),
    conv(16, 16, 11, stride=2, groups=16, op="depthwise_conv2d"),
    conv(6, 12, 8, kernel=5, groups=6, op="depthwise_conv2d"),
    conv(7, 7, 9, kernel=3, stride=2, groups=7, op="depthwise_conv2d"),
    # Inception's factorised 7x7: a 1x7 and a 7x1 kernel, each padded along its long side only
    LayerConfig("conv2d", 16, 24, 9, 9, kernel=1, kernel_w=7, padding=0, padding_w=3),
    LayerConfig("conv2d", 16, 20, 9, 11, kernel=7, kernel_w=1, padding=3, padding_w=0),
    LayerConfig("conv2d", 8, 12, 10, 10, kernel=3, kernel_w=5, stride=2, padding=1, padding_w=0),
    # activations fused into the write-back of each path, as a compiled model fuses them
    LayerConfig("conv2d", 16, 20, 9, 9, kernel=3, padding=1, activation="silu"),
    LayerConfig("conv2d", 8, 24, 8, 8, activation="hardswish"),
    LayerConfig("depthwise_conv2d", 12, 12, 10, 10, kernel=3, padding=1, groups=12, activation="relu6"),
    LayerConfig("conv2d", 24, 6, 1, 1, activation="hardsigmoid"),
    LayerConfig("linear", 64, 10),
    LayerConfig("linear", 48, 96, batch=16, activation="gelu"),
    LayerConfig("linear", 70, 13, batch=3),
    LayerConfig("linear", 512, 1000),
    LayerConfig("linear", 33, 17),
]


@pytest.fixture(scope="module")
def target(host_target):
    return tvm.target.Target(host_target)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.id)
def test_rule_based_schedule_is_applied_and_matches_torch(config, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a rule that fails warns and leaves the layer unscheduled
        mod = schedule(prim_module(config), target)
    assert mod["main"].attrs.get("tirx.is_scheduled", False)
    device = tvm.cpu()
    data, weight = random_inputs(config, seed=1)
    out = tvm.runtime.empty(config.output_shape, config.dtype, device)
    tvm.compile(mod, target)["main"](tvm.runtime.tensor(data, device), tvm.runtime.tensor(weight, device), out)
    assert relative_error(out.numpy(), reference(config, data, weight)) <= tolerance(config)


@pytest.mark.parametrize(
    "spec, lanes",
    [
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}, 16),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}, 8),
        ({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}, 4),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 4),
    ],
)
def test_vector_width_comes_from_the_target(spec, lanes):
    assert vector_lanes(spec) == lanes
    assert vector_lanes(spec, "float16") == 2 * lanes
    assert cpu_model(spec).accumulators >= 8


def test_other_targets_are_left_to_tvm():
    mod = prim_module(conv(4, 4, 6))
    assert schedule(mod, {"kind": "c"}).same_as(mod)


def _blocks(sch, parent):
    for block in sch.get_child_blocks(parent):
        yield block
        yield from _blocks(sch, block)


def _repacks(sch, packed_dims):
    """Per repack block (a padded repack's last tile is looped apart): its innermost loop, the
    loop around it, and the loop variables that pick the channel within a tile."""
    found = []
    for repack in _blocks(sch, sch.get_sblock("root")):
        block, loops = sch.get(repack), sch.get_loops(repack)
        if not block.writes or len(block.writes[0].source.shape) != packed_dims:
            continue
        bindings = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, repack).iter_values
        lane = tvm.tirx.analysis.undefined_vars(block.body.indices[-1])  # the block var of the in-tile channel
        lane_loops = [
            v
            for iv, b in zip(block.iter_vars, bindings)
            if any(iv.var.same_as(u) for u in lane)
            for v in tvm.tirx.analysis.undefined_vars(b)
        ]
        found.append((sch.get(loops[-1]), sch.get(loops[-2]), lane_loops))
    return found


@pytest.mark.parametrize("cin, cout", [(32, 64), (32, 63), (256, 64), (24, 200)])
def test_weights_are_repacked_a_few_channels_at_a_time_along_their_rows(cin, cout, target):
    sch = tvm.s_tir.Schedule(schedule(prim_module(conv(cin, cout, 4)), target)["main"])
    repacks = _repacks(sch, 5)
    assert repacks
    for innermost, around, lane_loops in repacks:
        assert innermost.kind == tvm.tirx.ForKind.VECTORIZED
        assert int(innermost.extent) == min(cpu_model(target).lanes("float32"), REPACK_ROWS)
        assert any(v.same_as(innermost.loop_var) for v in lane_loops), "the innermost loop gathers a few channels"
        assert not any(v.same_as(around.loop_var) for v in lane_loops), "around it, the rows' other axes"


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])  # AVX2 and AVX-512 tiles, whatever the host
@pytest.mark.parametrize("cout", [200, 203])  # several tiles, the last padded; 203 ends within a group of 8
def test_a_padded_tile_clamps_only_the_group_that_holds_the_last_channel(mcpu, cout):
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})
    text = schedule(prim_module(conv(24, cout, 1)), target)["main"].script()
    stores = [line for line in text.splitlines() if line.strip().startswith("weight_global[")]
    assert len(stores) >= 2, "the last tile is looped apart"
    assert sum("T.min" in line for line in stores) == (cout % REPACK_ROWS != 0)
    assert "if_then_else" not in text and "T.Select" not in text
    zeros = [line for line in stores if line.rstrip().endswith("= T.float32(0.0)")]
    assert all("weight[" in line for line in stores if line not in zeros), "every other group gathers weights"
    if mcpu == "skylake-avx512":  # tiles of 80 on a 1x1 map: the last holds 40 or 43 channels, then padding
        assert zeros


def test_weights_stored_channels_innermost_are_repacked_a_whole_tile_at_a_time(target):
    from tvm import te

    a, b = te.placeholder((3, 96), name="a"), te.placeholder((96, 40), name="b")  # b: [reduction, channels]
    k = te.reduce_axis((0, 96), name="k")
    c = te.compute((3, 40), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
    mod = schedule(tvm.IRModule({"main": te.create_prim_func([a, b, c]).with_attr("global_symbol", "main")}), target)
    ((innermost, _, lane_loops),) = _repacks(tvm.s_tir.Schedule(mod["main"]), 3)
    assert any(v.same_as(innermost.loop_var) for v in lane_loops), "the innermost loop walks the tile's channels"
    assert int(innermost.extent) % cpu_model(target).lanes("float32") == 0
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(shape).astype("float32") for shape in ((3, 96), (96, 40))]
    device = tvm.cpu()
    out = tvm.runtime.empty((3, 40), "float32", device)
    tvm.compile(mod, target)(*(tvm.runtime.tensor(x, device) for x in inputs), out)
    np.testing.assert_allclose(out.numpy(), inputs[0] @ inputs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        *(conv(2, cout, 28, kernel=1, stride=2) for cout in (5, 9, 18)),
        *(conv(4, cout, size, kernel=1) for cout, size in ((12, 14), (15, 10))),  # tiles down a column
        conv(6, 15, 28, kernel=1, stride=2),
    ],
    ids=lambda c: c.id,
)
def test_a_conv_writes_back_along_output_positions_without_scatters(config):
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    mod = schedule(prim_module(config), target)
    sch = tvm.s_tir.Schedule(mod["main"])
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    (writeback,) = [b for b in blocks if any(w.source.name == "conv2d_nchw" for w in sch.get(b).writes)]  # the output
    innermost = sch.get(sch.get_loops(writeback)[-1])
    assert innermost.kind == tvm.tirx.ForKind.VECTORIZED
    built = tvm.compile(mod, target).mod
    assembly = "".join(m.inspect_source("asm") for m in [built, *built.imports] if m.kind == "llvm")
    assert "vpaddq" in assembly or "vmovups" in assembly  # AVX-512 code was generated
    assert "vscatter" not in assembly


@pytest.mark.parametrize(
    ("config", "tile"),
    [
        (conv(7, 4, 14, kernel=1), {"yy": 14}),
        (conv(8, 4, 14, kernel=1), {"xx": 14}),
        (conv(7, 16, 14, kernel=1), {"xx": 14}),
        (conv(7, 40, 14, kernel=1), {"xx": 7}),
        (conv(6, 4, 28, kernel=1, stride=2), {"yy": 14}),  # strided too
        (conv(4, 12, 14, kernel=1), {"yy": 7}),  # at most 8 vectors' worth of outputs: 10 rows, so 7
    ],
    ids=lambda value: value.id if isinstance(value, LayerConfig) else str(value),
)
def test_a_tiny_reduction_into_less_than_a_vector_tiles_positions_down_a_column(config, tile):
    """Below 8 multiply-adds per output into less than a vector of channels, the register tile takes rows
    (LLVM unrolls the whole reduction, and inputs along a row became vector loads and shuffles), as
    many as keep the write-back, each output on another row, within 8 vectors' worth of elements."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    script = schedule(prim_module(config), target)["main"].script()
    tiled = {axis: int(extent) for axis, extent in re.findall(r"for (yy|xx)_1 in T\.unroll\(([0-9]+)\)", script)}
    assert {axis: extent for axis, extent in tiled.items() if extent > 1} == tile


@pytest.mark.parametrize(
    "config",
    [
        conv(10, 20, 28, kernel=1, stride=2),  # unpadded: its input rows (1080 bytes) are read where they lie
        conv(5, 16, 14, kernel=1),
        conv(16, 32, 14, kernel=1, stride=2),
        conv(12, 12, 4, groups=12, op="depthwise_conv2d"),
        LayerConfig("linear", 64, 10),
    ],
    ids=lambda c: c.id,
)
def test_a_small_layer_allocates_nothing_per_parallel_iteration(config):
    """TVM makes a ``local`` buffer, or a ``global`` one of 1 KiB or more, a workspace allocated and freed
    on every iteration of the loop it lives in: accumulators and padded input rows under 1 KiB stay on
    the stack, and an unpadded conv reads its input where it lies, with no copy per row."""
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    lowered = lowered_script(config, target)
    rows = lowered[lowered.index("T.parallel(") :]  # a repacked weight of 1 KiB or more is allocated above, once a call
    assert "TVMBackendAllocWorkspace" not in rows
