"""Where a whole model spends its time, by kind of operator, on this machine.

The model is compiled as ``hwloop measure`` compiles it (:mod:`hwloop.graph`, the schedule policy
of the layer tables) and run in TVM's Relax VM with an instrument that times every call the VM
makes (TVM 0.27 has no VM profiler of its own): each fused PrimFunc is one call, named after the
operators fused into it (``fused_conv2d3_add2_relu1``), so a call counts for the kind of its first
operator: ``conv2d`` and ``matmul`` (linear layers, their bias, activation and residual add fused
in) are what the layer tables price; the others (pooling, concatenation, squeeze-excitation's
scaling, LayerNorm, reshapes, the VM's own allocations) make up what the whole-model calibration
has to add to the sum of the layers.

Calls run one after another on the CPU, so a call's time is its kernel's plus the instrument's own
cost, which is taken off every call (the cheapest call's time, a VM builtin that checks a shape);
the kinds' shares are then scaled to the whole model's time measured without the instrument.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from torch import nn

# operator names as they open a fused PrimFunc's name (longest first), with the kind they count for
KINDS = {
    "conv2d": "conv2d",
    "matmul": "linear",
    "NT_matmul": "linear",  # a linear layer reading its weight as stored
    "dense": "linear",
    "adaptive_avg_pool2d": "pooling",
    "avg_pool2d": "pooling",
    "max_pool2d": "pooling",
    "mean": "pooling",
    "layer_norm": "layer_norm",
    "batch_norm": "batch_norm",
    "group_norm": "group_norm",
    "concatenate": "concatenate",
    "split": "split",
    "strided_slice": "slice",
    "reshape": "reshape/transpose",
    "transpose": "reshape/transpose",
    "permute_dims": "reshape/transpose",
    "squeeze": "reshape/transpose",
    "expand_dims": "reshape/transpose",
    "flatten": "reshape/transpose",
    "add": "elementwise",
    "multiply": "elementwise",
    "divide": "elementwise",
    "subtract": "elementwise",
    "relu": "elementwise",
    "sigmoid": "elementwise",
    "tir_clip": "elementwise",
    "clip": "elementwise",
    "gelu": "elementwise",
    "erf": "elementwise",
    "tanh": "elementwise",
    "silu": "elementwise",
    "softmax": "softmax",
}
PRICED = ("conv2d", "linear")  # the kinds the layer tables and the predictor price


def kind_of(symbol: str) -> str:
    """The operator kind a VM call counts for: its first fused operator's (see :data:`KINDS`),
    ``vm`` for the VM's builtins, or the name's first word."""
    if symbol.startswith("vm.builtin.") or symbol.startswith("vm."):
        return "vm"
    name = symbol.removeprefix("fused_")
    for op in sorted(KINDS, key=len, reverse=True):
        if re.match(rf"{op}\d*(_|$)", name):
            return KINDS[op]
    return re.match(r"[a-z]+", name).group(0) if re.match(r"[a-z]+", name) else name


@dataclass
class Profile:
    """The whole model's median milliseconds (measured without the instrument), its share per kind
    of operator and per VM call (in milliseconds of one run), and the calls of each kind in a run."""

    model_ms: float
    kinds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    functions: dict[str, float] = field(default_factory=dict)

    @property
    def priced_ms(self) -> float:
        return sum(ms for kind, ms in self.kinds.items() if kind in PRICED)

    @property
    def rest_ms(self) -> float:
        return sum(ms for kind, ms in self.kinds.items() if kind not in PRICED)

    def to_dict(self) -> dict:
        return {
            "model_ms": self.model_ms,
            "priced_ms": self.priced_ms,
            "rest_ms": self.rest_ms,
            "kinds": self.kinds,
            "calls": self.calls,
            "functions": self.functions,
        }


def profile(
    model: nn.Module, input_shape: tuple[int, ...], target: dict, policy, cache_dir, runs: int = 20, seed: int = 0
) -> Profile:
    """Compile ``model`` for ``target`` (a target this machine runs) with ``policy`` and time each
    VM call over ``runs`` runs after a warm-up."""
    import tvm
    from tvm import relax

    from .graph import compile_module, relax_module

    tvm_target = tvm.target.Target(target)
    executable = compile_module(policy.apply(relax_module(model, input_shape), tvm_target, cache_dir), tvm_target)
    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    data = tvm.runtime.tensor(np.random.default_rng(seed).standard_normal(input_shape).astype("float32"), device)
    vm["main"](data)
    model_ms = float(vm.time_evaluator("main", device, number=max(1, runs // 4), repeat=5)(data).median) * 1e3

    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - started.pop()
            counts[symbol] += 1
        return 0

    vm.set_instrument(tvm.runtime.convert(instrument))
    for _ in range(runs):
        vm["main"](data)
    # the instrument's own cost per call: the cheapest call's (a VM builtin that checks a shape)
    overhead = min(seconds / counts[symbol] for symbol, seconds in totals.items())
    spent = {symbol: max(0.0, seconds - counts[symbol] * overhead) / runs for symbol, seconds in totals.items()}
    scale = model_ms / max(sum(spent.values()), 1e-12)
    result = Profile(model_ms)
    for symbol, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        kind = kind_of(symbol)
        result.functions[symbol] = seconds * scale
        result.kinds[kind] = result.kinds.get(kind, 0.0) + seconds * scale
        result.calls[kind] = result.calls.get(kind, 0) + counts[symbol] // runs
    result.kinds = dict(sorted(result.kinds.items(), key=lambda item: -item[1]))
    return result
