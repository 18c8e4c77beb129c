"""A model's space: its conv/linear layers traced with torch, each with the channel counts a channel
pruner could leave (a side that is the model's input or output keeps its channels).

YAML space files: :mod:`hwloop.space`, which does not import torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .layers import LayerConfig
from .space import SpaceError


@dataclass(frozen=True)
class TracedLayer:
    """One conv/linear call of a model: its qualified module name, dense config, and which of its
    channel sides a pruner may change (not the side that is the model's input or output)."""

    name: str
    config: LayerConfig
    prunable_in: bool
    prunable_out: bool


ACTIVATIONS = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[TracedLayer]:
    """Run ``model`` once, in its current mode, on zeros of ``input_shape`` and record every
    ``nn.Conv2d`` and ``nn.Linear`` call in call order, with the activation module applied to its
    output (directly or after a batch norm, which a compiled model folds into it). A side is not
    prunable when its tensor is the model's input or output tensor, or a view of it (such as the
    flattened input of an MLP)."""
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls.append((name, module, inputs[0], output))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear, *NORMS, *ACTIVATIONS))
    ]
    try:
        with torch.no_grad():
            x = torch.zeros(tuple(input_shape))
            output = model(x)
    except Exception as exc:
        raise SpaceError(
            f"running the model on zeros of shape {tuple(input_shape)} raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    outputs = list(_tensors(output))
    consumer = {}
    for call in calls:
        consumer.setdefault(id(call[2]), call)  # the first module called on each tensor
    return [
        TracedLayer(
            name,
            _config(name, module, inp, _activation(out, consumer)),
            not _shares(inp, [x]),
            not _shares(out, outputs),
        )
        for name, module, inp, out in calls
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def _activation(output: torch.Tensor, consumer: dict) -> str:
    """The activation a layer's output goes through first, after a batch norm if one comes first."""
    call = consumer.get(id(output))
    if call is not None and isinstance(call[1], NORMS):
        call = consumer.get(id(call[3]))
    if call is None or type(call[1]) not in ACTIVATIONS:
        return "none"
    if isinstance(call[1], nn.GELU) and call[1].approximate != "none":
        return "none"
    return ACTIVATIONS[type(call[1])]


def _config(name: str, module: nn.Module, inp: torch.Tensor, activation: str) -> LayerConfig:
    dtype = str(inp.dtype).removeprefix("torch.")
    if isinstance(module, nn.Linear):
        fields = dict(
            op="linear",
            in_channels=module.in_features,
            out_channels=module.out_features,
            batch=math.prod(inp.shape[:-1]),
            dtype=dtype,
            activation=activation,
        )
    else:
        (kernel, kernel_w), stride, (padding, padding_w) = _conv_shape(name, module)
        depthwise = module.groups > 1 and module.groups == module.in_channels
        fields = dict(
            op="depthwise_conv2d" if depthwise else "conv2d",
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            input_h=inp.shape[-2],
            input_w=inp.shape[-1],
            kernel=kernel,
            kernel_w=kernel_w,
            stride=stride,
            padding=padding,
            padding_w=padding_w,
            groups=module.groups,
            batch=inp.shape[0] if inp.dim() == 4 else 1,
            dtype=dtype,
            activation=activation,
        )
    try:
        return LayerConfig(**fields)
    except ValueError as exc:
        raise SpaceError(f"{name}: unsupported {type(module).__name__}: {exc}") from exc


def _conv_shape(name: str, conv: nn.Conv2d) -> tuple[tuple[int, int], int, tuple[int, int]]:
    """Kernel (height, width), stride and zero padding (rows, columns) of a conv whose stride is
    square and dilation 1."""
    (kh, kw), (sh, sw), padding = conv.kernel_size, conv.stride, conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same" and kh % 2 and kw % 2:
        padding = (kh // 2, kw // 2)
    problems = []
    if sh != sw:
        problems.append(f"stride {sh}x{sw} is not square")
    if isinstance(padding, str):
        problems.append(f"padding {padding!r} with an even kernel {kh}x{kw} pads unevenly")
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation {tuple(conv.dilation)} is not 1")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode {conv.padding_mode!r} is not 'zeros'")
    if problems:
        raise SpaceError(f"{name}: unsupported Conv2d: {'; '.join(problems)}")
    return (kh, kw), sh, tuple(padding)


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _shares(tensor: torch.Tensor, others: list[torch.Tensor]) -> bool:
    """Whether ``tensor`` is one of ``others`` or a view of one (all are kept alive, so storages are distinct)."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(tensor is other or other.untyped_storage().data_ptr() == pointer for other in others)


def model_space(model: nn.Module, input_shape: tuple[int, ...], samples: int, seed: int = 0) -> list[LayerConfig]:
    """Every unique dense layer of ``model``, plus seeded random prunings of them up to ``samples`` configs.

    A layer's candidates keep each prunable side at 1..C channels (multiples of ``groups`` for a
    grouped conv; a depthwise conv's channels and groups move together). Draws go round-robin over
    the unique layers. Sorted by layer, then channel counts.
    """
    layers: dict[LayerConfig, tuple[bool, bool]] = {}
    for traced in trace_layers(model, input_shape):
        was_in, was_out = layers.get(traced.config, (False, False))
        layers[traced.config] = (was_in or traced.prunable_in, was_out or traced.prunable_out)
    if not layers:
        raise SpaceError(
            f"the model has no nn.Conv2d or nn.Linear layer to build a space from (input {tuple(input_shape)})"
        )
    rng = random.Random(seed)
    chosen = {dense: index for index, dense in enumerate(layers)}
    streams = [(index, _draws(rng, dense, *flags)) for index, (dense, flags) in enumerate(layers.items())]
    while streams and len(chosen) < samples:
        for stream in list(streams):
            if len(chosen) >= samples:
                break
            index, draws = stream
            for config in draws:
                if config not in chosen:
                    chosen[config] = index
                    break
            else:
                streams.remove(stream)
    return sorted(chosen, key=lambda c: (chosen[c], c.in_channels, c.out_channels))


def _draws(rng: random.Random, dense: LayerConfig, prunable_in: bool, prunable_out: bool) -> Iterator[LayerConfig]:
    """The pruned configs of one layer, each once, in random order."""
    if dense.op == "depthwise_conv2d":
        multiplier = dense.out_channels // dense.in_channels
        counts = range(1, dense.in_channels + 1) if prunable_in and prunable_out else [dense.in_channels]
        size = len(counts)

        def pruned(pick: int) -> LayerConfig:
            c = counts[pick]
            return replace(dense, in_channels=c, out_channels=c * multiplier, groups=c)
    else:
        g = dense.groups
        ins = range(g, dense.in_channels + 1, g) if prunable_in else [dense.in_channels]
        outs = range(g, dense.out_channels + 1, g) if prunable_out else [dense.out_channels]
        size = len(ins) * len(outs)

        def pruned(pick: int) -> LayerConfig:
            return replace(dense, in_channels=ins[pick // len(outs)], out_channels=outs[pick % len(outs)])

    seen: set[int] = set()
    while len(seen) < size:
        pick = rng.randrange(size)
        if pick not in seen:
            seen.add(pick)
            yield pruned(pick)
