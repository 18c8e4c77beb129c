import pytest

from hwloop.layers import LayerConfig
from hwloop.space import MAX_CONFIGS, SpaceError, SpaceTooLarge, load_space, space_size


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path)


# --- YAML spaces -------------------------------------------------------------------------------


def test_int_list_and_range_fields_expand_to_the_product(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: conv2d
    in_channels: [8, 16]
    out_channels: {start: 4, stop: 13, step: 4}
    input_hw: 14
    kernel: [1, 3]
    stride: 1
    groups: 1
""",
    )
    assert len(configs) == 2 * 3 * 2
    assert {c.in_channels for c in configs} == {8, 16}
    assert {c.out_channels for c in configs} == {4, 8, 12}
    assert all(c.input_h == c.input_w == 14 and c.padding == c.kernel // 2 for c in configs)
    assert configs[0] == LayerConfig("conv2d", 8, 4, 14, 14, kernel=1, padding=0)
    assert configs == _space(tmp_path, (tmp_path / "space.yaml").read_text())


def test_range_step_defaults_to_one_and_explicit_padding_batch_dtype(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: conv2d
    in_channels: 3
    out_channels: {start: 1, stop: 4}
    input_h: 10
    input_w: 6
    kernel: 3
    stride: 2
    groups: 1
    padding: 0
    batch: [1, 8]
    dtype: float16
""",
    )
    assert [(c.out_channels, c.batch) for c in configs] == [(1, 1), (1, 8), (2, 1), (2, 8), (3, 1), (3, 8)]
    assert all((c.input_h, c.input_w, c.padding, c.stride, c.dtype) == (10, 6, 0, 2, "float16") for c in configs)


def test_a_kernel_width_gives_a_kernel_that_is_not_square_padded_by_half_of_each_side(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: conv2d
    in_channels: 8
    out_channels: 8
    input_hw: 17
    kernel: [1, 7]
    kernel_w: 7
""",
    )
    assert [c.id for c in configs] == [
        "conv2d:1x8x17x17:o8:k1x7s1p0x3g1:float32",
        "conv2d:1x8x17x17:o8:k7s1p3g1:float32",
    ]


def test_an_activation_or_a_list_of_them_is_fused_into_each_layer(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: depthwise_conv2d
    in_channels: 8
    input_hw: 8
    kernel: 3
    activation: [none, silu]
""",
    )
    assert [c.activation for c in configs] == ["none", "silu"]


def test_depthwise_defaults_and_linear(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: depthwise_conv2d
    in_channels: [16, 32]
    input_hw: 28
    kernel: 3
    stride: [1, 2]
  - op: depthwise_conv2d
    in_channels: 8
    out_channels: [8, 12, 16]
    input_hw: 7
    kernel: 5
  - op: linear
    in_channels: 64
    out_channels: [10, 100]
    batch: 4
""",
    )
    depthwise = [c for c in configs if c.op == "depthwise_conv2d" and c.input_h == 28]
    assert len(depthwise) == 4
    assert all(c.groups == c.in_channels == c.out_channels and c.padding == 1 for c in depthwise)
    multiplied = [c for c in configs if c.input_h == 7]
    assert [(c.out_channels, c.groups, c.padding) for c in multiplied] == [(8, 8, 2), (16, 8, 2)]
    assert [c for c in configs if c.op == "linear"] == [
        LayerConfig("linear", 64, 10, batch=4),
        LayerConfig("linear", 64, 100, batch=4),
    ]


def test_invalid_combinations_are_skipped_and_duplicates_removed(tmp_path):
    configs = _space(
        tmp_path,
        """
layers:
  - op: conv2d
    in_channels: [4, 6]
    out_channels: 12
    input_hw: 8
    kernel: 3
    stride: 1
    groups: [1, 4]
  - op: conv2d
    in_channels: 4
    out_channels: 12
    input_hw: 8
    kernel: 3
    stride: 1
    groups: 1
""",
    )
    assert [(c.in_channels, c.groups) for c in configs] == [(4, 1), (4, 4), (6, 1)]


@pytest.mark.parametrize(
    "text, where",
    [
        ("nothing: here\n", "`layers:`"),
        ("layers: []\n", "layers: expected a non-empty list"),
        ("layers:\n  - {op: linear, in_channels: 4, out_channels: 2}\nextra: 1\n", "extra: unknown field"),
        ("layers: [: bad\n", "not valid YAML"),
        ("layers:\n  - 3\n", "layers[0]: expected a mapping"),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: 2}\n  - {op: pool, in_channels: 4}\n",
            "layers[1].op: expected one of",
        ),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: 2, colour: red}\n",
            "layers[0].colour: unknown field",
        ),
        ("layers:\n  - {op: linear, in_channels: x, out_channels: 2}\n", "layers[0].in_channels: expected an integer"),
        (
            "layers:\n  - {op: linear, in_channels: 4.0, out_channels: 2}\n",
            "layers[0].in_channels: expected an integer",
        ),
        (
            "layers:\n  - {op: linear, in_channels: [4, true], out_channels: 2}\n",
            "layers[0].in_channels: expected an integer",
        ),
        (
            "layers:\n  - {op: linear, in_channels: 0, out_channels: 2}\n",
            "layers[0].in_channels: 0 is below the minimum",
        ),
        ("layers:\n  - {op: linear, in_channels: [], out_channels: 2}\n", "layers[0].in_channels: empty list"),
        ("layers:\n  - {op: linear, in_channels: {start: 4}, out_channels: 2}\n", "layers[0].in_channels: a range is"),
        (
            "layers:\n  - {op: linear, in_channels: {start: 4, stop: 4}, out_channels: 2}\n",
            "layers[0].in_channels: range {'start': 4, 'stop': 4} is empty",
        ),
        (
            "layers:\n  - {op: linear, in_channels: {start: 1, stop: 4, step: 0}, out_channels: 2}\n",
            "layers[0].in_channels: range start and stop must be integers and step a positive integer",
        ),
        ("layers:\n  - {op: linear, in_channels: 4}\n", "layers[0].out_channels: missing"),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: 2, kernel: 1}\n",
            "layers[0].kernel: not a field of a linear layer",
        ),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: 2, dtype: int8}\n",
            "layers[0].dtype: expected one of",
        ),
        (
            "layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, kernel: 3}\n",
            "layers[0].input_h: missing (or give input_hw)",
        ),
        ("layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, input_hw: 8}\n", "layers[0].kernel: missing"),
        (
            "layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, input_hw: 8, input_h: 8, kernel: 3}\n",
            "layers[0].input_h: give either input_hw or input_h and input_w",
        ),
        (
            "layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, input_hw: 8, kernel: 3, padding: -1}\n",
            "layers[0].padding: -1 is below the minimum of 0",
        ),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: 2}\n"
            "  - {op: conv2d, in_channels: 6, out_channels: 6, input_hw: 8, kernel: 3, groups: [4, 5]}\n",
            "layers[1]: no valid layer in this entry, e.g. groups: 4 must divide",
        ),
        (
            "layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, input_hw: 2, kernel: 5, padding: 0}\n",
            "layers[0]: no valid layer in this entry, e.g. kernel: 5",
        ),
        (
            "layers:\n  - {op: linear, in_channels: 4, out_channels: [2, 3000000000]}\n",
            "layers[0].out_channels: 3000000000 is above the largest supported value, 2147483647",
        ),
        (
            "layers:\n  - {op: linear, in_channels: {start: 2147483640, stop: 2147483650}, out_channels: 2}\n",
            "layers[0].in_channels: range {'start': 2147483640, 'stop': 2147483650} reaches 2147483649, "
            "above the largest",
        ),
        (
            "layers:\n  - {op: conv2d, in_channels: 4, out_channels: 2, input_hw: 8, kernel: 3, padding: 4294967296}\n",
            "layers[0].padding: 4294967296 is above the largest supported value",
        ),
    ],
)
def test_malformed_spaces_name_file_entry_and_field(tmp_path, text, where):
    path = tmp_path / "bad-space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert where in message


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="absent.yaml: cannot read"):
        load_space(tmp_path / "absent.yaml")


def test_a_space_file_not_in_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# Räume\nlayers:\n  - {op: linear, in_channels: 4, out_channels: 2}\n".encode("latin-1"))
    with pytest.raises(SpaceError) as refused:
        load_space(path)
    assert str(refused.value).startswith(f"{path}: not UTF-8 text (byte 3: b'\\xe4')")


def test_a_space_of_millions_is_counted_and_refused_before_it_is_made(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(
        "layers:\n"
        "  - {op: linear, in_channels: [8, 16], out_channels: 4}\n"
        "  - {op: conv2d, in_channels: {start: 1, stop: 2001}, out_channels: {start: 1, stop: 3001}, "
        "input_hw: 8, kernel: 3}\n"
        "  - {op: linear, in_channels: {start: 1, stop: 2147483647, step: 1000}, out_channels: 2}\n"
    )
    count = 2 + 2000 * 3000 + 2147484
    assert space_size(path) == count
    with pytest.raises(SpaceTooLarge) as refused:
        load_space(path)
    assert (refused.value.count, refused.value.limit) == (count, MAX_CONFIGS)
    assert str(refused.value).startswith(
        f"{path}: the space multiplies out to {count:,} configs, above the limit of "
        f"{MAX_CONFIGS:,} (layers[1] alone: 2,000 in_channels x 3,000 out_channels)"
    )
    small = tmp_path / "small.yaml"
    small.write_text("layers:\n  - {op: linear, in_channels: [8, 16], out_channels: [2, 4]}\n")
    assert len(load_space(small, limit=4)) == 4
    with pytest.raises(SpaceTooLarge, match="above the limit of 3"):
        load_space(small, limit=3)
