"""Built-in PyTorch models, torchvision's classifiers (``torchvision:NAME``, random weights), and
user models loaded from ``path/to/file.py:callable`` (importing the file runs its code)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class ModelError(ValueError):
    """A model spec hwloop cannot load; the message names the spec."""


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: identity, or 1x1 conv-BN when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Sequential):
    """A ResNet of BasicBlocks: stem, stages (the first at stride 1, the others starting at stride 2),
    global average pooling and a linear classifier. Module names follow torchvision."""

    def __init__(
        self, widths: tuple[int, ...], depths: tuple[int, ...], num_classes: int, in_channels: int, imagenet_stem: bool
    ) -> None:
        stem = widths[0]
        if imagenet_stem:
            layers = OrderedDict(
                conv1=nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False),
                bn1=nn.BatchNorm2d(stem),
                relu=nn.ReLU(inplace=True),
                maxpool=nn.MaxPool2d(3, 2, 1),
            )
        else:
            layers = OrderedDict(
                conv1=nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
                bn1=nn.BatchNorm2d(stem),
                relu=nn.ReLU(inplace=True),
            )
        channels = stem
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for index in range(depth):
                blocks.append(BasicBlock(channels, width, 2 if stage > 0 and index == 0 else 1))
                channels = width
            layers[f"layer{stage + 1}"] = nn.Sequential(*blocks)
        layers.update(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
        super().__init__(layers)


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, activation: bool = True
) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped for ratio 1), 3x3 depthwise, linear 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [] if expand_ratio == 1 else [_conv_bn(in_channels, hidden, 1)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out_channels, 1, activation=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0 (Sandler et al. 2018)."""

    # expand ratio t, output channels c, repeats n, first stride s
    BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        features = [_conv_bn(in_channels, 32, 3, 2)]
        channels = 32
        for t, c, n, s in self.BLOCKS:
            for index in range(n):
                features.append(InvertedResidual(channels, c, s if index == 0 else 1, t))
                channels = c
        features.append(_conv_bn(channels, 1280, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20: 3 stages of 3 BasicBlocks, 16/32/64 channels."""
    return ResNet((16, 32, 64), (3, 3, 3), num_classes, in_channels, imagenet_stem=False)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56: 3 stages of 9 BasicBlocks, 16/32/64 channels."""
    return ResNet((16, 32, 64), (9, 9, 9), num_classes, in_channels, imagenet_stem=False)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-18: 7x7 stem and max pooling, 4 stages of 2 BasicBlocks, 64-512 channels."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels, imagenet_stem=True)


def mobilenetv2(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ImageNet MobileNetV2, width 1.0."""
    return MobileNetV2(num_classes, in_channels)


@dataclass(frozen=True)
class BuiltinModel:
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "resnet20": BuiltinModel(
        resnet20, (1, 3, 32, 32), "CIFAR ResNet-20 (3x3 BasicBlocks, 16/32/64 channels), 10 classes"
    ),
    "resnet56": BuiltinModel(
        resnet56, (1, 3, 32, 32), "CIFAR ResNet-56 (9 blocks per stage, 16/32/64 channels), 10 classes"
    ),
    "resnet18": BuiltinModel(resnet18, (1, 3, 224, 224), "ImageNet ResNet-18 (64-512 channels), 1000 classes"),
    "mobilenetv2": BuiltinModel(
        mobilenetv2, (1, 3, 224, 224), "ImageNet MobileNetV2 width 1.0 (depthwise), 1000 classes"
    ),
}


TORCHVISION = "torchvision:"
# Builder arguments a torchvision classifier needs to train like the others: one output, not the
# auxiliary heads' tuple in training mode.
TORCHVISION_ARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
TORCHVISION_INPUT = (1, 3, 224, 224)


def load_model(
    spec: str, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build a built-in model by name, a torchvision classifier as ``torchvision:NAME`` (random
    weights), or call ``callable`` of ``path/to/file.py:callable``.

    A built-in's ``input_shape`` (N, C, H, W) defaults to its own and sets its input channels; a
    torchvision classifier's defaults to 1x3x224x224 and must have 3 channels; ``num_classes``
    applies to both. A file needs ``input_shape``. The model is in eval mode.
    """
    if input_shape is not None:
        input_shape = tuple(input_shape)
        if not input_shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in input_shape):
            raise ModelError(f"{spec}: input shape {input_shape} must be positive integers")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ModelError(f"{spec}: num_classes must be a positive integer, got {num_classes!r}")
    if spec in BUILTIN_MODELS:
        model, shape = _builtin(spec, input_shape, num_classes)
    elif spec.startswith(TORCHVISION):
        model, shape = _torchvision(spec, input_shape, num_classes)
    elif ":" in spec:
        model, shape = _from_file(spec, input_shape, num_classes)
    else:
        raise ModelError(
            f"unknown model {spec!r}: built-in models are {', '.join(BUILTIN_MODELS)}; torchvision's "
            "classifiers are torchvision:NAME (such as torchvision:resnet50); a model of your own is "
            "given as path/to/file.py:callable"
        )
    return model.eval(), shape


def model_file(spec: str) -> Path | None:
    """The Python file of a ``path/to/file.py:callable`` spec; None for a built-in or torchvision model."""
    if spec in BUILTIN_MODELS or spec.startswith(TORCHVISION) or ":" not in spec:
        return None
    return Path(spec.rpartition(":")[0])


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex; :class:`ModelError` names the file when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def torchvision_models():
    """``torchvision.models``, torchvision's model definitions.

    A torchvision wheel built for another torch (a CUDA build beside torch's CPU build, say) fails
    at ``import torchvision`` while registering its compiled detection operators, which no
    classifier uses. Then the ``torchvision`` package is set up without running its
    ``__init__`` (so without those registrations) and ``torchvision.models`` imported from it; the
    operators (``torchvision.ops.nms`` and the like) stay unavailable in this process.
    """
    try:
        return importlib.import_module("torchvision.models")
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise ModelError(f"torchvision cannot be imported: {exc}") from exc
        raise ModelError(
            "torchvision is not installed: pip install 'hwloop[vision]' (or torchvision matching your torch)"
        ) from exc
    except (RuntimeError, ImportError, OSError):
        pass
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    package = importlib.util.module_from_spec(spec)
    sys.modules["torchvision"] = package
    try:
        return importlib.import_module("torchvision.models")
    except Exception as exc:
        del sys.modules["torchvision"]
        raise ModelError(f"torchvision's model definitions cannot be imported: {type(exc).__name__}: {exc}") from exc


def torchvision_classifiers() -> list[str]:
    """The names of torchvision's image classifiers (``torchvision.models.list_models``)."""
    models = torchvision_models()
    return sorted(models.list_models(module=models))


def _builtin(
    spec: str, input_shape: tuple[int, ...] | None, num_classes: int | None
) -> tuple[nn.Module, tuple[int, ...]]:
    builtin = BUILTIN_MODELS[spec]
    shape = input_shape or builtin.input_shape
    if len(shape) != 4:
        raise ModelError(f"{spec}: input shape {shape} must have 4 dimensions (N, C, H, W)")
    kwargs = {"in_channels": shape[1]}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return builtin.build(**kwargs), shape


def _torchvision(
    spec: str, input_shape: tuple[int, ...] | None, num_classes: int | None
) -> tuple[nn.Module, tuple[int, ...]]:
    name = spec.removeprefix(TORCHVISION)
    shape = input_shape or TORCHVISION_INPUT
    if len(shape) != 4 or shape[1] != 3:
        raise ModelError(
            f"{spec}: input shape {shape}: torchvision's classifiers take 3-channel images (N, 3, H, W); "
            "grey images are repeated to 3 channels with --input-shape 1,3,H,W"
        )
    classifiers = torchvision_classifiers()
    if name not in classifiers:
        raise ModelError(f"{spec}: not one of torchvision's classifiers: {', '.join(classifiers)}")
    kwargs = dict(TORCHVISION_ARGS.get(name, {}))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = torchvision_models().get_model(name, weights=None, **kwargs)
    except Exception as exc:
        raise ModelError(f"{spec}: building it raised {type(exc).__name__}: {exc}") from exc
    return model, shape


def _from_file(
    spec: str, input_shape: tuple[int, ...] | None, num_classes: int | None
) -> tuple[nn.Module, tuple[int, ...]]:
    file, _, name = spec.rpartition(":")
    if not file or not name:
        raise ModelError(f"{spec}: expected path/to/file.py:callable")
    if input_shape is None:
        raise ModelError(f"{spec}: a model from a file needs an input shape, such as 1,3,32,32")
    if num_classes is not None:
        raise ModelError(f"{spec}: num_classes applies to built-in and torchvision models only; set it in {name}()")
    path = Path(file)
    if not path.is_file():
        raise ModelError(f"{spec}: no such file {path}")
    module = _import(spec, path)
    build = getattr(module, name, None)
    if not callable(build):
        raise ModelError(f"{spec}: {path} defines no callable {name!r}")
    try:
        model = build()
    except Exception as exc:
        raise ModelError(f"{spec}: {name}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: {name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model, input_shape


def _import(spec: str, path: Path):
    """Import a Python file as a module, with its folder on ``sys.path`` while it runs."""
    resolved = path.resolve()
    module_name = "hwloop_user_model_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ModelError(f"{spec}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelError(f"{spec}: importing {path} raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(resolved.parent))
    return module
