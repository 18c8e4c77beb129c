import random

import pytest
import torch
from torch import nn

from hwloop.models import mobilenetv2, resnet18, resnet20
from hwloop.prune.groups import ChannelGroups, PruneError
from hwloop.tracing import trace_layers


class Branches(nn.Module):
    """A concatenation of two branches, then a grouped conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(14, 10, 3, padding=1)
        self.grouped = nn.Conv2d(10, 10, 3, padding=1, groups=2)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        y = self.grouped(torch.relu(self.c(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(y.mean((2, 3)))


CASES = [
    (lambda: resnet20(10, 1), (1, 1, 28, 28)),
    (lambda: mobilenetv2(10, 3), (1, 3, 32, 32)),
    (lambda: resnet18(10, 3), (1, 3, 32, 32)),
    (Branches, (1, 3, 16, 16)),
]


@pytest.mark.parametrize("build, shape", CASES, ids=["resnet20", "mobilenetv2", "resnet18", "branches"])
@pytest.mark.parametrize("seed", [0, 1])
def test_arbitrary_plans_keep_shapes_and_predicted_layers(build, shape, seed):
    model = build().eval()
    groups = ChannelGroups(model, shape)
    rng = random.Random(seed)
    plan = {g.name: g.unit * rng.randint(1, g.size // g.unit) for g in groups.groups}
    keep = groups.top(
        {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(seed)) for g in groups.groups}, plan
    )
    expected = groups.layers(plan)
    groups.apply(keep)
    out = model(torch.randn(2, *shape[1:]))
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert [t.config for t in trace_layers(model, shape)] == expected


def test_residual_stream_is_one_group():
    groups = ChannelGroups(resnet20(10, 1).eval(), (1, 1, 28, 28))
    stage3 = next(g for g in groups.groups if "layer3.0.conv2" in g.producers)
    assert set(stage3.producers) == {"layer3.0.downsample.0", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2"}
    assert set(stage3.consumers) == {"layer3.1.conv1", "layer3.2.conv1", "fc"}
    assert "fc" not in groups.by_name  # the output layer stays dense
    inner = groups.by_name["layer2.1.conv1"]
    assert inner.producers == ["layer2.1.conv1"] and list(inner.consumers) == ["layer2.1.conv2"]


def test_depthwise_follows_its_expansion():
    groups = ChannelGroups(mobilenetv2(10, 3).eval(), (1, 3, 32, 32))
    expand = next(g for g in groups.groups if "features.2.conv.0.0" in g.producers)
    assert list(expand.depthwise) == ["features.2.conv.1.0"] and list(expand.consumers) == ["features.2.conv.2.0"]
    layers = groups.layers({**groups.dense, expand.name: 10})
    depthwise = layers[[t.name for t in groups.traced].index("features.2.conv.1.0")]
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (10, 10, 10)


def test_concatenation_positions_and_grouped_conv_pruned_alike_in_each_group():
    groups = ChannelGroups(Branches().eval(), (1, 3, 16, 16))
    assert groups.by_name["a"].consumers == {"c": list(range(8))}
    assert groups.by_name["b"].consumers == {"c": list(range(8, 14))}
    assert set(groups.by_name) == {"a", "b", "c", "grouped"}
    assert (groups.by_name["c"].unit, groups.by_name["grouped"].unit, groups.by_name["a"].unit) == (2, 2, 1)
    keep = groups.top({"c": torch.tensor([0.0, 5, 1, 0, 0, 0, 4, 2, 0, 0])}, {"c": 4})
    assert keep == {"c": [1, 2, 6, 7]}  # positions 1 and 2 of each half: the highest averaged over both
    with pytest.raises(PruneError, match="same channels each"):
        groups.apply({"c": [0, 1, 5, 7]})
    with pytest.raises(PruneError, match=r"c: channel count must be an integer in 1..10, in steps of 2"):
        groups.layers({"c": 3})


def test_bad_plans_are_refused():
    groups = ChannelGroups(resnet20(10, 1).eval(), (1, 1, 28, 28))
    with pytest.raises(PruneError, match="unknown group 'nope'"):
        groups.layers({"nope": 3})
    with pytest.raises(PruneError, match=r"layer1.0.conv1: channel count must be an integer in 1..16"):
        groups.layers({"layer1.0.conv1": 17})
