import dataclasses

import pytest
import torch
from torch import nn

from hwloop.layers import LayerConfig
from hwloop.models import BUILTIN_MODELS, load_model
from hwloop.space import SpaceError
from hwloop.tracing import TracedLayer, model_space, trace_layers

# --- tracing -----------------------------------------------------------------------------------

TRACE = {
    # name: (input shape, layer calls, unique dense configs, depthwise calls); a conv followed by a
    # ReLU and the same conv whose output is added to the shortcut first are two configs
    # CIFAR: stem + 2 convs per block + 2 projection shortcuts + fc; ResNet-18: 1 + 16 + 3 + 1;
    # MobileNetV2: stem + 2 convs in the t=1 block + 3 in each of 16 others + last 1x1 + classifier.
    "resnet20": ((1, 3, 32, 32), 1 + 18 + 2 + 1, 12, 0),
    "resnet56": ((1, 3, 32, 32), 1 + 54 + 2 + 1, 12, 0),
    "resnet18": ((1, 3, 224, 224), 1 + 16 + 3 + 1, 16, 0),
    "mobilenetv2": ((1, 3, 224, 224), 1 + 2 + 48 + 1 + 1, 31, 17),
}


@pytest.fixture(scope="module")
def traces():
    traced = {}
    for name in BUILTIN_MODELS:
        model, shape = load_model(name)
        traced[name] = (model, shape, trace_layers(model, shape))
    return traced


@pytest.mark.parametrize("name", TRACE)
def test_trace_builtin_models(traces, name):
    model, shape, traced = traces[name]
    expected_shape, calls, unique, depthwise = TRACE[name]
    assert shape == expected_shape
    assert len(traced) == calls
    assert len({t.config for t in traced}) == unique
    assert all(isinstance(t, TracedLayer) for t in traced)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[t.name], (nn.Conv2d, nn.Linear)) for t in traced)
    first, last = traced[0], traced[-1]
    assert (first.prunable_in, first.prunable_out) == (False, True)
    assert first.config.in_channels == 3 and first.config.input_h == shape[2]
    assert (last.prunable_in, last.prunable_out) == (True, False)
    assert last.config.op == "linear" and last.config.batch == 1
    assert all(t.prunable_in and t.prunable_out for t in traced[1:-1])
    dw = [t.config for t in traced if t.config.op == "depthwise_conv2d"]
    assert len(dw) == depthwise
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel == 3 for c in dw)


def test_trace_resnet20_details(traces):
    _, _, traced = traces["resnet20"]
    by_name = {t.name: t.config for t in traced}
    assert by_name["conv1"] == LayerConfig("conv2d", 3, 16, 32, 32, kernel=3, padding=1, activation="relu")
    assert by_name["layer2.0.conv1"] == LayerConfig(
        "conv2d", 16, 32, 32, 32, kernel=3, stride=2, padding=1, activation="relu"
    )
    assert by_name["layer2.0.conv2"] == LayerConfig("conv2d", 32, 32, 16, 16, kernel=3, padding=1)  # + shortcut
    assert by_name["layer3.0.downsample.0"] == LayerConfig("conv2d", 32, 64, 16, 16, kernel=1, stride=2)
    assert by_name["fc"] == LayerConfig("linear", 64, 10)
    assert [t.name for t in traced[:3]] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]


def test_trace_mobilenetv2_spatial_sizes(traces):
    _, _, traced = traces["mobilenetv2"]
    by_name = {t.name: t.config for t in traced}
    assert by_name["features.1.conv.0.0"] == LayerConfig(
        "depthwise_conv2d", 32, 32, 112, 112, kernel=3, padding=1, groups=32, activation="relu6"
    )
    assert by_name["features.18.0"] == LayerConfig("conv2d", 320, 1280, 7, 7, activation="relu6")


def test_trace_views_of_input_linear_batch_and_multiple_outputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(12, 8)
            self.head = nn.Linear(8, 3)
            self.aux = nn.Linear(8, 2)

        def forward(self, x):
            h = self.embed(x.flatten(2))  # (2, 5, 12) -> batch 10
            return self.head(h), self.aux(h).relu()

    traced = trace_layers(Net(), (2, 5, 3, 4))
    assert [(t.name, t.config.batch, t.prunable_in, t.prunable_out) for t in traced] == [
        ("embed", 10, False, True),
        ("head", 10, True, False),
        ("aux", 10, True, True),
    ]


@pytest.mark.parametrize(
    "conv, problem",
    [
        (nn.Conv2d(3, 4, 3, stride=(1, 2)), "stride 1x2 is not square"),
        (nn.Conv2d(3, 4, 2, padding="same"), "padding 'same' with an even kernel 2x2 pads unevenly"),
        (nn.Conv2d(3, 4, 3, dilation=2), "dilation (2, 2) is not 1"),
        (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), "padding_mode 'reflect'"),
    ],
)
def test_unsupported_convs_name_the_module(conv, problem):
    model = nn.Sequential(nn.Identity(), conv)
    with pytest.raises(SpaceError, match="^1: unsupported Conv2d: ") as info:
        trace_layers(model, (1, 3, 8, 8))
    assert problem in str(info.value)


def test_same_and_valid_padding():
    model = nn.Sequential(nn.Conv2d(3, 4, 5, padding="same"), nn.Conv2d(4, 4, 3, padding="valid"))
    assert [t.config.padding for t in trace_layers(model, (1, 3, 8, 8))] == [2, 0]


def test_kernels_that_are_not_square_keep_their_height_and_width():
    """Inception's factorised 7x7 convs: 1x7 then 7x1, each padded along its long side."""
    model = nn.Sequential(nn.Conv2d(3, 4, (1, 7), padding=(0, 3)), nn.Conv2d(4, 4, (7, 1), padding=(3, 0)))
    traced = [t.config for t in trace_layers(model, (1, 3, 9, 11))]
    assert [(c.kernel, c.kernel_w, c.padding, c.padding_w) for c in traced] == [(1, 7, 0, 3), (7, 1, 3, 0)]
    assert [c.weight_shape for c in traced] == [tuple(m.weight.shape) for m in model]
    assert all(c.output_shape == (1, 4, 9, 11) for c in traced)


def test_the_activation_each_layer_output_goes_through_is_recorded():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
            self.expand, self.act = nn.Conv2d(8, 8, 1), nn.Hardswish()
            self.body, self.bn, self.relu = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
            self.head, self.gelu = nn.Linear(8, 10), nn.GELU(approximate="tanh")

        def forward(self, x):
            x = self.act(self.expand(self.stem(x)))
            x = self.relu(self.bn(self.body(x)) + x)  # the residual sum, not the conv, goes through the ReLU
            return self.gelu(self.head(x.mean((2, 3))))

    traced = trace_layers(Net(), (1, 3, 8, 8))
    assert [t.config.activation for t in traced] == ["silu", "hardswish", "none", "none"]


def test_model_that_fails_to_run():
    with pytest.raises(SpaceError, match=r"running the model on zeros of shape \(1, 4, 8, 8\) raised RuntimeError"):
        trace_layers(nn.Conv2d(3, 4, 3), (1, 4, 8, 8))


# --- model spaces ------------------------------------------------------------------------------


def _matches_dense(config: LayerConfig, dense: list[LayerConfig]) -> bool:
    """A dense config with the same fixed fields and at least as many channels."""
    fixed = {"in_channels", "out_channels", "groups"}
    return any(
        all(getattr(config, f.name) == getattr(d, f.name) for f in dataclasses.fields(d) if f.name not in fixed)
        and config.in_channels <= d.in_channels
        and config.out_channels <= d.out_channels
        for d in dense
    )


def test_resnet20_space(traces):
    model, shape, traced = traces["resnet20"]
    dense = list(dict.fromkeys(t.config for t in traced))
    configs = model_space(model, shape, 120, seed=1)
    assert len(configs) == len(set(configs)) == 120
    assert set(dense) <= set(configs)
    assert all(isinstance(c, LayerConfig) and _matches_dense(c, dense) for c in configs)
    assert configs == model_space(model, shape, 120, seed=1)
    assert configs != model_space(model, shape, 120, seed=2)
    heads = [c for c in configs if c.op == "linear"]
    assert len(heads) > 1 and all(c.out_channels == 10 for c in heads)
    # samples are spread over the 9 unique layers: every layer gets about 120 / 9 of them
    per_layer = [sum(_matches_dense(c, [d]) and c.op == d.op for c in configs) for d in dense]
    assert min(per_layer) >= 10


def test_space_is_sorted_by_layer_then_channels():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)).eval()
    configs = model_space(model, (1, 3, 17, 17), 40, seed=5)
    layer = {(8, 3): 1, (6, 1): 2}
    keys = [(0 if c.input_h == 17 else layer[c.input_h, c.kernel], c.in_channels, c.out_channels) for c in configs]
    assert len(keys) == 40 and keys == sorted(keys)
    # spaces of 8 (3 -> 1..8), 64 and 8 (1..8 -> 4): the rounds exhaust the small ones
    assert [sum(k[0] == i for k in keys) for i in range(3)] == [8, 24, 8]


def test_few_samples_give_dense_configs_only(traces):
    model, shape, traced = traces["resnet56"]
    dense = list(dict.fromkeys(t.config for t in traced))
    assert model_space(model, shape, 3) == dense
    assert model_space(model, shape, len(dense)) == dense


def test_mobilenetv2_space_couples_depthwise_channels(traces):
    model, shape, traced = traces["mobilenetv2"]
    dense = list(dict.fromkeys(t.config for t in traced))
    configs = model_space(model, shape, 200, seed=3)
    assert len(configs) == 200 and set(dense) <= set(configs)
    depthwise = [c for c in configs if c.op == "depthwise_conv2d"]
    assert len(depthwise) > sum(d.op == "depthwise_conv2d" for d in dense)
    assert all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert all(_matches_dense(c, dense) for c in configs)


def test_small_space_is_returned_whole_without_duplicates():
    # conv a: 2 -> 1..3 (input fixed); conv b: 1..3 -> 2 (output fixed); a(2->2) == b(2->2)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 1)).eval()
    configs = model_space(model, (1, 2, 4, 4), 100)
    assert [(c.in_channels, c.out_channels) for c in configs] == [(2, 1), (2, 2), (2, 3), (1, 2), (3, 2)]


def test_depthwise_and_grouped_candidates():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 1),
        nn.Conv2d(4, 8, 3, padding=1, groups=4),  # depthwise with multiplier 2
        nn.Conv2d(8, 6, 1, groups=2),  # grouped: counts stay multiples of 2
        nn.Conv2d(6, 2, 1),
    ).eval()
    configs = model_space(model, (1, 2, 6, 6), 10_000)
    depthwise = [(c.in_channels, c.out_channels, c.groups) for c in configs if c.op == "depthwise_conv2d"]
    assert depthwise == [(1, 2, 1), (2, 4, 2), (3, 6, 3), (4, 8, 4)]
    grouped = [(c.in_channels, c.out_channels) for c in configs if c.op == "conv2d" and c.groups == 2]
    assert grouped == [(i, o) for i in (2, 4, 6, 8) for o in (2, 4, 6)]
    assert len(configs) == 4 + 4 + 12 + 6 - 1  # the first and last 1x1 convs share 2 -> 2


def test_model_without_layers():
    with pytest.raises(SpaceError, match="no nn.Conv2d or nn.Linear"):
        model_space(nn.ReLU(), (1, 3, 4, 4), 10)


def test_traced_configs_build_matching_torch_layers(traces):
    model, shape, traced = traces["resnet18"]
    modules = dict(model.named_modules())
    for t in traced:
        module = modules[t.name]
        weight_shape = tuple(module.weight.shape)
        assert weight_shape == t.config.weight_shape, t.name
    with torch.no_grad():
        stem = modules["conv1"](torch.zeros(traced[0].config.input_shape))
    assert tuple(stem.shape) == traced[0].config.output_shape
