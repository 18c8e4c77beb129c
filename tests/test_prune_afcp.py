import torch

from hwloop.models import resnet20
from hwloop.prune.afcp import fold, foldable, nearest, similarity
from hwloop.prune.groups import ChannelGroups


def _copy_channel(model, conv, bn, source, copy):
    with torch.no_grad():
        conv.weight[copy] = conv.weight[source]
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor[copy] = tensor[source]


def _model():
    torch.manual_seed(0)
    model = resnet20(10, 1)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_replacing_an_exact_copy_leaves_the_output_unchanged():
    model = _model()
    block = model.layer2[1]
    _copy_channel(model, block.conv1, block.bn1, source=3, copy=11)
    x = torch.randn(8, 1, 28, 28)
    expected = model(x)
    groups = ChannelGroups(model, (1, 1, 28, 28))
    assert "layer2.1.conv1" in foldable(groups)
    grams = similarity(groups, [(x, None)], ["layer2.1.conv1"])
    k, alpha = nearest(grams["layer2.1.conv1"])
    assert int(k[11]) == 3 and abs(float(alpha[11]) - 1) < 1e-6
    keep = {"layer2.1.conv1": [i for i in range(32) if i != 11]}
    assert fold(groups, keep, {"layer2.1.conv1": [11]}, grams) == 1
    groups.apply(keep)
    assert model.layer2[1].conv2.in_channels == 31
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_zeroing_out_the_copy_changes_the_output():
    model = _model()
    block = model.layer2[1]
    _copy_channel(model, block.conv1, block.bn1, source=3, copy=11)
    x = torch.randn(8, 1, 28, 28)
    expected = model(x)
    groups = ChannelGroups(model, (1, 1, 28, 28))
    groups.apply({"layer2.1.conv1": [i for i in range(32) if i != 11]})
    assert not torch.allclose(model(x), expected, rtol=1e-4, atol=1e-5)


def test_kept_gate_values_fold_into_consumers():
    model = _model()
    x = torch.randn(4, 1, 28, 28)
    groups = ChannelGroups(model, (1, 1, 28, 28))
    name = "layer1.0.conv1"
    scale = torch.linspace(0.5, 1.0, 16)
    conv2 = model.layer1[0].conv2
    handle = conv2.register_forward_pre_hook(lambda _m, args: (args[0] * scale.view(1, -1, 1, 1),))
    expected = model(x)
    handle.remove()
    fold(groups, {name: list(range(16))}, {}, {}, {name: scale})
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
