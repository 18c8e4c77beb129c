import pytest

from hwloop.layers import LayerConfig


def test_ids_are_stable_and_readable():
    conv = LayerConfig("conv2d", 16, 32, 32, 32, kernel=3, padding=1)
    assert conv.id == "conv2d:1x16x32x32:o32:k3s1p1g1:float32"
    assert LayerConfig.from_dict(conv.to_dict()) == conv
    assert LayerConfig("linear", 64, 10).id == "linear:1x64:o10:k1s1p0g1:float32"


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
        (dict(op="conv2d", in_channels=3, out_channels=8, dtype="int8"), "dtype"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        LayerConfig(**kwargs)
