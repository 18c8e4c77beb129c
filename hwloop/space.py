"""Layer spaces: the layer configurations to measure, from a YAML file or from a model's layers.

A YAML space has a ``layers:`` list; each entry expands to the cartesian product of its fields,
each an int, a list of ints or ``{start, stop, step}`` (stop exclusive). A model's space holds
each of its conv/linear layers with the channel counts a channel pruner could leave.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .layers import DTYPES, INT32_MAX, OPS, LayerConfig


class SpaceError(ValueError):
    """A space hwloop cannot use; the message names the file, entry and field, or the model's module."""


NUMBERS = (
    "in_channels",
    "out_channels",
    "input_hw",
    "input_h",
    "input_w",
    "kernel",
    "stride",
    "padding",
    "groups",
    "batch",
)
CONV_ONLY = ("input_hw", "input_h", "input_w", "kernel", "stride", "padding", "groups")
FIELDS = ("op", *NUMBERS, "dtype")
MAX_CONFIGS = 100_000  # a space file's entries may multiply out to this many configs at most


def load_space(path: str | Path, limit: int = MAX_CONFIGS) -> list[LayerConfig]:
    """The configs of a YAML space file, deduplicated, in the order of the file's entries; a file
    whose entries multiply out to more than ``limit`` configs is refused before any is made."""
    entries = _entries(path)
    sizes = [math.prod(len(values) for values in axes.values()) for _, _, axes in entries]
    if sum(sizes) > limit:
        where, _, axes = entries[sizes.index(max(sizes))]
        factors = " x ".join(f"{len(values):,} {name}" for name, values in axes.items() if len(values) > 1)
        raise SpaceTooLarge(
            f"{path}: the space multiplies out to {sum(sizes):,} configs, above the limit of "
            f"{limit:,} ({where.removeprefix(f'{path}: ')} alone: {factors or '1'}); narrow it with "
            "a larger `step` in its ranges or fewer values in its lists, or split it into files",
            sum(sizes),
            limit,
        )
    configs: dict[LayerConfig, None] = {}
    for where, op, axes in entries:
        configs.update(dict.fromkeys(_expand(op, axes, where)))
    return list(configs)


def space_size(path: str | Path) -> int:
    """How many configs a YAML space file's entries multiply out to, counted without making them (an
    upper bound of what :func:`load_space` returns: duplicates and impossible shapes are left out)."""
    return sum(math.prod(len(values) for values in axes.values()) for _, _, axes in _entries(path))


class SpaceTooLarge(SpaceError):
    """A space file that multiplies out to more configs than the limit."""

    def __init__(self, message: str, count: int, limit: int):
        super().__init__(message)
        self.count, self.limit = count, limit


def _entries(path: str | Path) -> list[tuple[str, str, dict[str, Sequence]]]:
    """Each entry of a space file, checked: where it is, its op, and the values of each field."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SpaceError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
            "save the space file as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "layers" not in data:
        raise SpaceError(f"{path}: expected a mapping with a `layers:` list")
    if set(data) != {"layers"}:
        raise SpaceError(
            f"{path}: {sorted(set(data) - {'layers'}, key=str)[0]}: unknown field; a space has only `layers:`"
        )
    entries = data["layers"]
    if not isinstance(entries, list) or not entries:
        raise SpaceError(f"{path}: layers: expected a non-empty list of layers")
    return [
        (where, *_axes(entry, where))
        for where, entry in ((f"{path}: layers[{index}]", entry) for index, entry in enumerate(entries))
    ]


def _axes(entry: Any, where: str) -> tuple[str, dict[str, Sequence]]:
    """An entry's op and the values of each of its fields, checked."""
    if not isinstance(entry, dict):
        raise SpaceError(f"{where}: expected a mapping of fields, got {entry!r}")
    for name in entry:
        if name not in FIELDS:
            raise SpaceError(f"{where}.{name}: unknown field; fields are {', '.join(FIELDS)}")
    op = entry.get("op")
    if op not in OPS:
        raise SpaceError(f"{where}.op: expected one of {', '.join(OPS)}, got {op!r}")
    required = ["in_channels"] if op == "depthwise_conv2d" else ["in_channels", "out_channels"]
    if op == "linear":
        for name in CONV_ONLY:
            if name in entry:
                raise SpaceError(f"{where}.{name}: not a field of a linear layer")
    else:
        required.append("kernel")
        if "input_hw" in entry:
            for name in ("input_h", "input_w"):
                if name in entry:
                    raise SpaceError(f"{where}.{name}: give either input_hw or input_h and input_w")
        else:
            required += ["input_h", "input_w"]
    for name in required:
        if name not in entry:
            raise SpaceError(f"{where}.{name}: missing" + (" (or give input_hw)" if name.startswith("input_") else ""))

    axes: dict[str, Sequence] = {
        name: _numbers(entry[name], f"{where}.{name}", 0 if name == "padding" else 1)
        for name in NUMBERS
        if name in entry
    }
    axes["dtype"] = _dtypes(entry.get("dtype", "float32"), f"{where}.dtype")
    return op, axes


def _expand(op: str, axes: dict[str, Sequence], where: str) -> list[LayerConfig]:
    configs, first_error = [], None
    for values in itertools.product(*axes.values()):
        fields = dict(zip(axes, values), op=op)
        if "input_hw" in fields:
            fields["input_h"] = fields["input_w"] = fields.pop("input_hw")
        if op != "linear":
            fields.setdefault("padding", fields["kernel"] // 2)
        if op == "depthwise_conv2d":
            fields.setdefault("out_channels", fields["in_channels"])
            fields.setdefault("groups", fields["in_channels"])
        try:
            configs.append(LayerConfig(**fields))
        except ValueError as exc:
            first_error = first_error or exc
    if not configs:
        raise SpaceError(f"{where}: no valid layer in this entry, e.g. {first_error}")
    return configs


def _numbers(value: Any, where: str, minimum: int) -> Sequence[int]:
    """A field's values: an int, a list of ints, or a range (kept as one, however long)."""
    too_large = f"above the largest supported value, {INT32_MAX} (int32, the tables' column type)"
    if isinstance(value, dict):
        unknown = set(value) - {"start", "stop", "step"}
        if unknown or not {"start", "stop"} <= set(value):
            raise SpaceError(f"{where}: a range is {{start, stop, step}} (step optional), got {value!r}")
        start, stop, step = (value.get(key, 1) for key in ("start", "stop", "step"))
        if not all(_is_int(v) for v in (start, stop, step)) or step < 1:
            raise SpaceError(
                f"{where}: range start and stop must be integers and step a positive integer, got {value!r}"
            )
        values = range(start, stop, step)
        if not values:
            raise SpaceError(f"{where}: range {value!r} is empty (stop is exclusive)")
        if values[0] < minimum:
            raise SpaceError(f"{where}: {values[0]} is below the minimum of {minimum}")
        if values[-1] > INT32_MAX:
            raise SpaceError(f"{where}: range {value!r} reaches {values[-1]}, {too_large}")
        return values
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpaceError(f"{where}: empty list")
    for v in values:
        if not _is_int(v):
            raise SpaceError(f"{where}: expected an integer, a list of integers or {{start, stop, step}}, got {v!r}")
        if v < minimum:
            raise SpaceError(f"{where}: {v} is below the minimum of {minimum}")
        if v > INT32_MAX:
            raise SpaceError(f"{where}: {v} is {too_large}")
    return list(dict.fromkeys(values))


def _dtypes(value: Any, where: str) -> list[str]:
    values = value if isinstance(value, list) and value else [value]
    for v in values:
        if v not in DTYPES:
            raise SpaceError(f"{where}: expected one of {', '.join(DTYPES)} or a list of them, got {v!r}")
    return list(dict.fromkeys(values))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TracedLayer:
    """One conv/linear call of a model: its qualified module name, dense config, and which of its
    channel sides a pruner may change (not the side that is the model's input or output)."""

    name: str
    config: LayerConfig
    prunable_in: bool
    prunable_out: bool


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[TracedLayer]:
    """Run ``model`` once, in its current mode, on zeros of ``input_shape`` and record every
    ``nn.Conv2d`` and ``nn.Linear`` call in call order. A side is not prunable when its tensor is
    the model's input or output tensor, or a view of it (such as the flattened input of an MLP)."""
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls.append((name, module, inputs[0], output))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
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
    return [
        TracedLayer(name, _config(name, module, inp), not _shares(inp, [x]), not _shares(out, outputs))
        for name, module, inp, out in calls
    ]


def _config(name: str, module: nn.Module, inp: torch.Tensor) -> LayerConfig:
    dtype = str(inp.dtype).removeprefix("torch.")
    if isinstance(module, nn.Linear):
        fields = dict(
            op="linear",
            in_channels=module.in_features,
            out_channels=module.out_features,
            batch=math.prod(inp.shape[:-1]),
            dtype=dtype,
        )
    else:
        kernel, stride, padding = _square(name, module)
        depthwise = module.groups > 1 and module.groups == module.in_channels
        fields = dict(
            op="depthwise_conv2d" if depthwise else "conv2d",
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            input_h=inp.shape[-2],
            input_w=inp.shape[-1],
            kernel=kernel,
            stride=stride,
            padding=padding,
            groups=module.groups,
            batch=inp.shape[0] if inp.dim() == 4 else 1,
            dtype=dtype,
        )
    try:
        return LayerConfig(**fields)
    except ValueError as exc:
        raise SpaceError(f"{name}: unsupported {type(module).__name__}: {exc}") from exc


def _square(name: str, conv: nn.Conv2d) -> tuple[int, int, int]:
    """Kernel, stride and padding of a conv whose kernel, stride and zero padding are square, dilation 1."""
    (kh, kw), (sh, sw), padding = conv.kernel_size, conv.stride, conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same" and kh % 2 and kw % 2:
        padding = (kh // 2, kw // 2)
    problems = []
    if kh != kw:
        problems.append(f"kernel {kh}x{kw} is not square")
    if sh != sw:
        problems.append(f"stride {sh}x{sw} is not square")
    if isinstance(padding, str) or padding[0] != padding[1]:
        problems.append(f"padding {padding!r} is not square")
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation {tuple(conv.dilation)} is not 1")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode {conv.padding_mode!r} is not 'zeros'")
    if problems:
        raise SpaceError(f"{name}: unsupported Conv2d: {'; '.join(problems)}")
    return kh, sh, padding[0]


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
