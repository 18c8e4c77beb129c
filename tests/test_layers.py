import pytest

from hwloop.layers import LayerConfig


def test_ids_are_stable_and_readable():
    conv = LayerConfig("conv2d", 16, 32, 32, 32, kernel=3, padding=1)
    assert conv.id == "conv2d:1x16x32x32:o32:k3s1p1g1:float32"
    assert LayerConfig.from_dict(conv.to_dict()) == conv
    assert LayerConfig("linear", 64, 10).id == "linear:1x64:o10:k1s1p0g1:float32"


def test_a_kernel_that_is_not_square_has_its_height_and_width_in_the_id():
    row = LayerConfig("conv2d", 16, 24, 17, 17, kernel=1, kernel_w=7, padding=0, padding_w=3)
    assert row.id == "conv2d:1x16x17x17:o24:k1x7s1p0x3g1:float32"
    assert LayerConfig.from_id(row.id) == row and LayerConfig.from_dict(row.to_dict()) == row
    assert (row.weight_shape, row.output_shape, row.macs) == ((24, 16, 1, 7), (1, 24, 17, 17), 24 * 17 * 17 * 16 * 7)
    square = LayerConfig("conv2d", 16, 24, 17, 17, kernel=3, padding=1)
    assert (square.kernel_w, square.padding_w) == (3, 1)
    assert square == LayerConfig("conv2d", 16, 24, 17, 17, kernel=3, padding=1, kernel_w=3, padding_w=1)
    assert LayerConfig.from_id("conv2d:1x16x17x17:o24:k3s1p1g1") == square


def test_an_activation_fused_into_a_layer_is_in_its_id_unless_none():
    silu = LayerConfig("depthwise_conv2d", 32, 32, 16, 16, kernel=3, padding=1, groups=32, activation="silu")
    assert silu.id == "depthwise_conv2d:1x32x16x16:o32:k3s1p1g32:silu:float32"
    assert LayerConfig.from_id(silu.id) == silu and LayerConfig.from_dict(silu.to_dict()) == silu
    gelu = LayerConfig("linear", 96, 384, batch=64, activation="gelu")
    assert LayerConfig.from_id("linear:64x96:o384:gelu") == gelu
    assert LayerConfig.from_id("linear:64x96:o384").activation == "none"


def test_a_row_written_before_kernel_widths_were_recorded_reads_as_square():
    old = {**LayerConfig("conv2d", 8, 8, 9, 9, kernel=3, padding=1).to_dict(), "kernel_w": None, "activation": None}
    read_back = {**old, "kernel_w": float("nan"), "padding_w": float("nan"), "in_channels": 8.0}
    for row in (old, read_back):
        assert LayerConfig.from_dict(row) == LayerConfig("conv2d", 8, 8, 9, 9, kernel=3, padding=1)


def test_shapes_and_macs():
    dw = LayerConfig("depthwise_conv2d", 32, 32, 56, 56, kernel=3, stride=2, padding=1, groups=32)
    assert dw.output_shape == (1, 32, 28, 28)
    assert dw.weight_shape == (32, 1, 3, 3)
    assert dw.macs == 32 * 28 * 28 * 9
    assert LayerConfig("linear", 64, 10, batch=4).macs == 4 * 64 * 10


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(op="pool", in_channels=1, out_channels=1), "op"),
        (dict(op="conv2d", in_channels=0, out_channels=1), "in_channels"),
        (dict(op="conv2d", in_channels=6, out_channels=4, groups=4), "groups"),
        (dict(op="depthwise_conv2d", in_channels=8, out_channels=8, groups=1), "groups"),
        (dict(op="linear", in_channels=8, out_channels=8, kernel=3), "linear"),
        (dict(op="conv2d", in_channels=3, out_channels=8, input_h=4, input_w=4, kernel=7), "kernel"),
        (dict(op="conv2d", in_channels=3, out_channels=8, input_h=9, input_w=4, kernel=1, kernel_w=7), "kernel: 1x7"),
        (dict(op="conv2d", in_channels=3, out_channels=8, kernel_w=0), "kernel_w"),
        (dict(op="conv2d", in_channels=3, out_channels=8, padding_w=-1), "padding_w"),
        (dict(op="conv2d", in_channels=3, out_channels=8, dtype="int8"), "dtype"),
        (dict(op="conv2d", in_channels=3, out_channels=8, activation="tanh"), "activation"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        LayerConfig(**kwargs)
