"""Layer configurations: one immutable record per candidate layer that hwloop builds and times."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

OPS = ("conv2d", "depthwise_conv2d", "linear")
DTYPES = ("float32", "float16")
ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "silu", "sigmoid", "gelu")
WIDTH_FIELDS = {"kernel_w": "kernel", "padding_w": "padding"}  # each the same as its height's unless given
INT32_MAX = 2**31 - 1  # the largest shape field: tables store them as int32
ID = re.compile(
    r"(?P<op>conv2d|depthwise_conv2d|linear):(?P<shape>[0-9x]+):o(?P<out>\d+)"
    r"(?::k(?P<k>\d+)(?:x(?P<kw>\d+))?s(?P<s>\d+)p(?P<p>\d+)(?:x(?P<pw>\d+))?g(?P<g>\d+))?"
    rf"(?::(?P<activation>{'|'.join(ACTIVATIONS[1:])}))?(?::(?P<dtype>\w+))?"
)


@dataclass(frozen=True, order=True)
class LayerConfig:
    """A conv2d, depthwise conv2d or linear layer with concrete shapes (NCHW, OIHW weights).

    ``kernel`` and ``padding`` are the kernel's height and the rows of zeros above and below;
    ``kernel_w`` and ``padding_w``, its width and the columns of zeros either side, are the same
    unless given. ``activation`` is applied to the output in the same kernel, as a compiled model
    fuses it (``none``: the plain layer). A linear layer has ``input_h = input_w = kernel = 1``; a
    depthwise layer has ``groups == in_channels`` and ``out_channels`` a multiple of it.
    """

    op: str
    in_channels: int
    out_channels: int
    input_h: int = 1
    input_w: int = 1
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch: int = 1
    dtype: str = "float32"
    kernel_w: int | None = None
    padding_w: int | None = None
    activation: str = "none"

    def __post_init__(self) -> None:
        if self.kernel_w is None:
            object.__setattr__(self, "kernel_w", self.kernel)
        if self.padding_w is None:
            object.__setattr__(self, "padding_w", self.padding)
        if self.op not in OPS:
            raise ValueError(f"op: {self.op!r} is not one of {', '.join(OPS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        positive = (
            "in_channels",
            "out_channels",
            "input_h",
            "input_w",
            "kernel",
            "kernel_w",
            "stride",
            "groups",
            "batch",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
            if value > INT32_MAX:
                raise ValueError(f"{name}: {value} is above the largest supported value, {INT32_MAX}")
        for name in ("padding", "padding_w"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT32_MAX:
                raise ValueError(f"{name}: must be an integer from 0 to {INT32_MAX}, got {value!r}")
        if self.op == "linear":
            ones = (self.input_h, self.input_w, self.kernel, self.kernel_w, self.stride, self.groups)
            if ones != (1,) * 6 or (self.padding, self.padding_w) != (0, 0):
                raise ValueError(
                    "linear: input_h, input_w, kernel, kernel_w, stride, groups must be 1 and padding, padding_w 0"
                )
        if self.op == "depthwise_conv2d" and self.groups != self.in_channels:
            raise ValueError(
                f"groups: a depthwise conv needs groups == in_channels ({self.in_channels}), got {self.groups}"
            )
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups: {self.groups} must divide in_channels ({self.in_channels}) "
                f"and out_channels ({self.out_channels})"
            )
        if self.output_h < 1 or self.output_w < 1:
            raise ValueError(
                f"kernel: {self._kernel_text} with padding {self._padding_text} does not fit "
                f"a {self.input_h}x{self.input_w} input"
            )

    @property
    def id(self) -> str:
        """Stable, readable key: equal configs have equal ids across runs and machines."""
        if self.op == "linear":
            shape = f"{self.batch}x{self.in_channels}"
        else:
            shape = f"{self.batch}x{self.in_channels}x{self.input_h}x{self.input_w}"
        layer = f"k{self._kernel_text}s{self.stride}p{self._padding_text}g{self.groups}"
        activation = "" if self.activation == "none" else f":{self.activation}"
        return f"{self.op}:{shape}:o{self.out_channels}:{layer}{activation}:{self.dtype}"

    @property
    def _kernel_text(self) -> str:
        return str(self.kernel) if self.kernel == self.kernel_w else f"{self.kernel}x{self.kernel_w}"

    @property
    def _padding_text(self) -> str:
        return str(self.padding) if self.padding == self.padding_w else f"{self.padding}x{self.padding_w}"

    @property
    def output_h(self) -> int:
        return (self.input_h + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def output_w(self) -> int:
        return (self.input_w + 2 * self.padding_w - self.kernel_w) // self.stride + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.op == "linear":
            return (self.batch, self.in_channels)
        return (self.batch, self.in_channels, self.input_h, self.input_w)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.op == "linear":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel_w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.op == "linear":
            return (self.batch, self.out_channels)
        return (self.batch, self.out_channels, self.output_h, self.output_w)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass."""
        per_output = (self.in_channels // self.groups) * self.kernel * self.kernel_w
        return self.batch * self.out_channels * self.output_h * self.output_w * per_output

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerConfig":
        """The config of a :meth:`to_dict` or a table row; a missing (or null) ``kernel_w``,
        ``padding_w`` or ``activation``, as in rows written before they were recorded, is the square
        kernel's and no activation."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: _native(v) for k, v in data.items() if k in names and not _missing(v)})

    @classmethod
    def from_id(cls, text: str) -> "LayerConfig":
        """The config whose :attr:`id` is ``text``; a linear id may leave out ``:k1s1p0g1``, any id
        its activation (none) and its dtype (float32). Raises ValueError saying what is wrong."""
        match = ID.fullmatch(text)
        if not match:
            raise ValueError(
                "expected a config id such as conv2d:1x64x56x56:o64:k3s1p1g1:float32 "
                "or linear:1x512:o10 (the config_id column of a table)"
            )
        dims = [int(d) for d in match["shape"].split("x")]
        out, dtype, activation = int(match["out"]), match["dtype"] or "float32", match["activation"] or "none"
        if match["op"] == "linear":
            if len(dims) != 2:
                raise ValueError("a linear shape is BATCHxIN, e.g. 1x512")
            return cls("linear", dims[1], out, batch=dims[0], dtype=dtype, activation=activation)
        if len(dims) != 4 or match["k"] is None:
            raise ValueError(
                "a conv needs NxCxHxW and :kKsSpPgG (KHxKW and PHxPW where the kernel is not square), "
                "e.g. conv2d:1x64x56x56:o64:k3s1p1g1 or conv2d:1x64x17x17:o64:k1x7s1p0x3g1"
            )
        return cls(
            match["op"],
            dims[1],
            out,
            dims[2],
            dims[3],
            int(match["k"]),
            int(match["s"]),
            int(match["p"]),
            int(match["g"]),
            dims[0],
            dtype,
            int(match["kw"] or match["k"]),
            int(match["pw"] or match["p"]),
            activation,
        )


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _native(value):
    """A whole float as an int: a table column with nulls reads as floats."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
