import pytest
import torch
from torch import nn

from hwloop.models import BUILTIN_MODELS, ModelError, load_model

# Parameter counts: torchvision's resnet18 and mobilenet_v2; the CIFAR ResNets are the published
# option-A counts (269,722 and 853,018) plus 2,752 for the two 1x1 conv + BN projection shortcuts.
ARCHITECTURE = {
    # name: (convs, of which depthwise, linears, parameters, classes)
    "resnet20": (21, 0, 1, 272_474, 10),
    "resnet56": (57, 0, 1, 855_770, 10),
    "resnet18": (20, 0, 1, 11_689_512, 1000),
    "mobilenetv2": (52, 17, 1, 3_504_872, 1000),
}


def test_builtin_names_and_defaults():
    assert list(BUILTIN_MODELS) == list(ARCHITECTURE)
    assert BUILTIN_MODELS["resnet20"].input_shape == (1, 3, 32, 32)
    assert BUILTIN_MODELS["resnet18"].input_shape == (1, 3, 224, 224)
    assert all(m.description for m in BUILTIN_MODELS.values())


@pytest.mark.parametrize("name", ARCHITECTURE)
def test_builtin_architecture(name):
    convs, depthwise, linears, parameters, classes = ARCHITECTURE[name]
    model, shape = load_model(name)
    modules = list(model.modules())
    conv_modules = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert len(conv_modules) == convs
    assert sum(m.groups == m.in_channels > 1 for m in conv_modules) == depthwise
    assert sum(isinstance(m, nn.Linear) for m in modules) == linears
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (1, classes)


@pytest.mark.parametrize("name", ARCHITECTURE)
def test_builtin_on_small_grayscale_input(name):
    model, shape = load_model(name, (2, 1, 28, 28), num_classes=7)
    assert shape == (2, 1, 28, 28)
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (2, 7)


def test_cifar_resnet_downsamples_with_projection():
    model, _ = load_model("resnet20")
    shortcut = model.layer2[0].downsample
    assert (shortcut[0].kernel_size, shortcut[0].stride, shortcut[0].out_channels) == ((1, 1), (2, 2), 32)
    assert isinstance(shortcut[1], nn.BatchNorm2d)
    assert model.layer1[0].downsample is None


def test_user_model_from_file(tmp_path):
    (tmp_path / "blocks.py").write_text("from torch import nn\nWIDTH = 5\n")
    (tmp_path / "net.py").write_text(
        "from torch import nn\n"
        "from blocks import WIDTH\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(2, WIDTH, 3), nn.Dropout(), nn.Flatten(), nn.Linear(WIDTH * 4, 3))\n"
    )
    model, shape = load_model(f"{tmp_path / 'net.py'}:build", (1, 2, 4, 4))
    assert shape == (1, 2, 4, 4)
    assert model[0].out_channels == 5
    assert not model.training
    assert model(torch.zeros(shape)).shape == (1, 3)


def _user_file(tmp_path, body: str) -> str:
    path = tmp_path / "user_model.py"
    path.write_text("from torch import nn\n" + body)
    return str(path)


@pytest.mark.parametrize(
    "body, spec_suffix, message",
    [
        ("", ":missing", "defines no callable 'missing'"),
        ("build = 3\n", ":build", "defines no callable 'build'"),
        ("def build():\n    return 'a string'\n", ":build", "returned str, not a torch.nn.Module"),
        ("def build():\n    raise RuntimeError('no weights')\n", ":build", "build() raised RuntimeError: no weights"),
        ("def build(:\n", ":build", "raised SyntaxError"),
        ("import not_a_module_anywhere\n", ":build", "raised ModuleNotFoundError"),
    ],
)
def test_user_file_errors(tmp_path, body, spec_suffix, message):
    spec = _user_file(tmp_path, body) + spec_suffix
    with pytest.raises(ModelError) as info:
        load_model(spec, (1, 3, 8, 8))
    assert str(info.value).startswith(f"{spec}: ")
    assert message in str(info.value)


def test_unknown_model_lists_builtins():
    with pytest.raises(ModelError, match="unknown model 'resnet21'") as info:
        load_model("resnet21")
    assert all(name in str(info.value) for name in BUILTIN_MODELS)


def test_missing_file(tmp_path):
    spec = f"{tmp_path / 'nope.py'}:build"
    with pytest.raises(ModelError, match="no such file") as info:
        load_model(spec, (1, 3, 8, 8))
    assert spec in str(info.value)


def test_file_needs_input_shape_and_no_num_classes(tmp_path):
    spec = _user_file(tmp_path, "def build():\n    return nn.Linear(2, 2)\n") + ":build"
    with pytest.raises(ModelError, match="needs an input shape") as info:
        load_model(spec)
    assert spec in str(info.value)
    with pytest.raises(ModelError, match="num_classes applies to built-in and torchvision models only"):
        load_model(spec, (1, 2), num_classes=4)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 32), "must have 4 dimensions"),
        ((1, 0, 32, 32), "must be positive integers"),
    ],
)
def test_builtin_input_shape_errors(shape, message):
    with pytest.raises(ModelError, match=message) as info:
        load_model("resnet20", shape)
    assert str(info.value).startswith("resnet20: ")


def test_builtin_num_classes_error():
    with pytest.raises(ModelError, match="resnet20: num_classes must be a positive integer"):
        load_model("resnet20", num_classes=0)
