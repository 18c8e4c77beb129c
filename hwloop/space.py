"""Layer spaces from YAML files: the layer configurations to measure.

A YAML space has a ``layers:`` list; each entry expands to the cartesian product of its fields,
each an int, a list of ints or ``{start, stop, step}`` (stop exclusive). A conv's ``kernel`` is
square unless ``kernel_w`` gives its width; ``padding`` and ``padding_w`` default to half the
kernel's height and width; ``activation`` (``none`` unless given) is fused into the layer. A model's space (its
layers traced with torch): :mod:`hwloop.tracing`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .layers import ACTIVATIONS, DTYPES, INT32_MAX, OPS, LayerConfig


class SpaceError(ValueError):
    """A space hwloop cannot use; the message names the file, entry and field, or the model's module."""


NUMBERS = (
    "in_channels",
    "out_channels",
    "input_hw",
    "input_h",
    "input_w",
    "kernel",
    "kernel_w",
    "stride",
    "padding",
    "padding_w",
    "groups",
    "batch",
)
CONV_ONLY = ("input_hw", "input_h", "input_w", "kernel", "kernel_w", "stride", "padding", "padding_w", "groups")
FIELDS = ("op", *NUMBERS, "dtype", "activation")
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
        name: _numbers(entry[name], f"{where}.{name}", 0 if name.startswith("padding") else 1)
        for name in NUMBERS
        if name in entry
    }
    axes["dtype"] = _names(entry.get("dtype", "float32"), f"{where}.dtype", DTYPES)
    axes["activation"] = _names(entry.get("activation", "none"), f"{where}.activation", ACTIVATIONS)
    return op, axes


def _expand(op: str, axes: dict[str, Sequence], where: str) -> list[LayerConfig]:
    configs, first_error = [], None
    for values in itertools.product(*axes.values()):
        fields = dict(zip(axes, values), op=op)
        if "input_hw" in fields:
            fields["input_h"] = fields["input_w"] = fields.pop("input_hw")
        if op != "linear":
            fields.setdefault("padding", fields["kernel"] // 2)
            fields.setdefault("padding_w", fields.get("kernel_w", fields["kernel"]) // 2)
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


def _names(value: Any, where: str, allowed: Sequence[str]) -> list[str]:
    values = value if isinstance(value, list) and value else [value]
    for v in values:
        if v not in allowed:
            raise SpaceError(f"{where}: expected one of {', '.join(allowed)} or a list of them, got {v!r}")
    return list(dict.fromkeys(values))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
