import warnings

import pytest
import tvm

from hwloop.kernels import prim_module, random_inputs, reference, relative_error, tolerance
from hwloop.layers import LayerConfig
from hwloop.schedules.default import cpu_model, schedule, vector_lanes


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
    conv(13, 40, 16, kernel=1),
    conv(3, 5, 12, kernel=1),
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
    LayerConfig("linear", 64, 10),
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


@pytest.mark.parametrize("cout", [64, 63])
def test_weights_are_repacked_in_the_packed_layout_order_whether_or_not_channels_fill_the_tile(cout, target):
    sch = tvm.s_tir.Schedule(schedule(prim_module(conv(32, cout, 8)), target)["main"])
    (repack,) = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if len(sch.get(b).writes[0].source.shape) == 5]
    block, loops = sch.get(repack), sch.get_loops(repack)
    innermost = sch.get(loops[-1])
    bindings = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, repack).iter_values
    lane = tvm.tirx.analysis.undefined_vars(block.writes[0].region[-1].min)  # the block var of the in-tile channel
    lane_loops = [
        v
        for iv, b in zip(block.iter_vars, bindings)
        if any(iv.var.same_as(u) for u in lane)
        for v in tvm.tirx.analysis.undefined_vars(b)
    ]
    assert int(innermost.extent) == int(block.writes[0].source.shape[-1])
    assert any(v.same_as(innermost.loop_var) for v in lane_loops), "the innermost loop walks the channels of one tile"


@pytest.mark.parametrize("cout", [5, 9, 18])
def test_a_conv_writes_back_along_output_positions_without_scatters(cout):
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    mod = schedule(prim_module(conv(2, cout, 28, kernel=1, stride=2)), target)
    sch = tvm.s_tir.Schedule(mod["main"])
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    (writeback,) = [b for b in blocks if sch.get(b).writes[0].source.name == "conv2d_nchw"]  # the output
    innermost = sch.get(sch.get_loops(writeback)[-1])
    assert innermost.kind == tvm.tirx.ForKind.VECTORIZED
    built = tvm.compile(mod, target).mod
    assembly = "".join(m.inspect_source("asm") for m in [built, *built.imports] if m.kind == "llvm")
    assert "vpaddq" in assembly or "vmovups" in assembly  # AVX-512 code was generated
    assert "vscatter" not in assembly
