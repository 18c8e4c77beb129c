"""TVM kernels for layer configurations, and the torch reference they are checked against."""

from __future__ import annotations

import numpy as np

from .layers import LayerConfig


def prim_module(config: LayerConfig):
    """The layer as an IRModule with one PrimFunc ``main(data, weight, output)``."""
    import tvm
    from tvm import te, topi

    data = te.placeholder(config.input_shape, config.dtype, name="data")
    weight = te.placeholder(config.weight_shape, config.dtype, name="weight")
    if config.op == "linear":
        out = topi.nn.dense(data, weight)
    elif config.groups == 1:
        out = topi.nn.conv2d_nchw(data, weight, config.stride, _padding(config), 1)
    else:
        out = topi.nn.group_conv2d_nchw(data, weight, config.stride, _padding(config), 1, config.groups)
    out = _activation(config.activation, out)
    func = te.create_prim_func([data, weight, out]).with_attr("global_symbol", "main")
    return tvm.IRModule({"main": func})


def _activation(name: str, x):
    """``x`` with the activation ``name`` applied, as torch defines it."""
    from tvm import topi

    if name == "relu":
        return topi.nn.relu(x)
    if name == "relu6":
        return topi.clip(x, 0.0, 6.0)
    if name == "hardsigmoid":
        return topi.divide(topi.clip(topi.add(x, 3.0), 0.0, 6.0), 6.0)
    if name == "hardswish":
        return topi.multiply(x, _activation("hardsigmoid", x))
    if name == "sigmoid":
        return topi.sigmoid(x)
    if name == "silu":
        return topi.multiply(x, topi.sigmoid(x))
    if name == "gelu":
        return topi.multiply(topi.multiply(x, 0.5), topi.add(topi.erf(topi.multiply(x, 0.5**0.5)), 1.0))
    return x


def _padding(config: LayerConfig) -> tuple[int, int]:
    return (config.padding, config.padding_w)


def random_inputs(config: LayerConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Data and weight tensors drawn from a seeded generator, scaled to keep outputs O(1)."""
    rng = np.random.default_rng(seed)
    fan_in = (config.in_channels // config.groups) * config.kernel * config.kernel_w
    data = rng.standard_normal(config.input_shape).astype(config.dtype)
    weight = (rng.standard_normal(config.weight_shape) / np.sqrt(fan_in)).astype(config.dtype)
    return data, weight


def reference(config: LayerConfig, data: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The layer's output computed by PyTorch in float32."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(data.astype(np.float32))
    w = torch.from_numpy(weight.astype(np.float32))
    with torch.no_grad():
        if config.op == "linear":
            out = F.linear(x, w)
        else:
            out = F.conv2d(x, w, stride=config.stride, padding=_padding(config), groups=config.groups)
        if config.activation != "none":
            out = getattr(F, config.activation)(out)  # each activation's name is torch's
    return out.numpy()


def relative_error(output: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest expected magnitude."""
    scale = max(float(np.abs(expected).max()), 1e-6)
    return float(np.abs(output.astype(np.float32) - expected).max()) / scale


def tolerance(config: LayerConfig) -> float:
    """The relative error a correct kernel of this dtype stays under."""
    return 1e-2 if config.dtype == "float16" else 1e-4
