"""End-to-end latency of whole models on a device, compiled with the policy of the layer tables.

A model is lowered by :mod:`hwloop.graph`, each of its convolution and dense PrimFuncs scheduled by
the schedule policy (the rules that produced the layer rows), compiled into a Relax executable for
the device's target, checked against torch on the device and timed with the device's protocol.
Rows go to the device's model table (:func:`hwloop.tables.read_models`), with the model's layers,
so a whole-model measurement and the sum of its layers speak of the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .builder import export, prepare
from .registry import Device
from .rows import Context
from .runner import Measurement
from .schedules import Policy
from .session import ModelBuild, Session, batched
from .space import trace_layers
from .transports import TransportError


@dataclass(frozen=True)
class ModelCase:
    """A model to measure: a name for the tables, the module, and its input shape (N, C, H, W)."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]


def model_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """The model's conv/linear layers in call order, as ``LayerConfig`` dicts."""
    return [layer.config.to_dict() for layer in trace_layers(model.eval(), input_shape)]


def model_id(name: str, input_shape: tuple[int, ...], layers: list[dict]) -> str:
    """A stable key of a model's name, input shape and layers (its latency does not depend on weights)."""
    text = json.dumps([name, list(input_shape), layers], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_io(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random input and torch's output for it (the model in eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(tuple(input_shape), generator=generator)
    with torch.no_grad():
        expected = model.eval()(data)
    return data.numpy(), expected.numpy()


def build_model(model: nn.Module, input_shape: tuple[int, ...], target: dict, policy: Policy, cc: str | None,
                cache_dir: Path, path: Path) -> None:
    """Compile ``model`` for ``target`` with ``policy`` into the library ``path`` (raises on failure)."""
    import tvm

    from .graph import compile_module, relax_module

    tvm_target = tvm.target.Target(target)
    prepare(tvm_target, cc)
    scheduled = policy.apply(relax_module(model, input_shape), tvm_target, Path(cache_dir))
    export(compile_module(scheduled, tvm_target), tvm_target, cc, path)


def _build(model: nn.Module, input_shape: tuple[int, ...], context: Context, policy: Policy, cache_dir: Path,
           artifact: Path) -> tuple[Measurement | None, float]:
    """Build ``model`` into ``artifact``: (None, seconds), or (the failed measurement, seconds)."""
    start = time.perf_counter()
    try:
        build_model(model, input_shape, context.target, policy, context.device.cc, cache_dir, artifact)
    except Exception as exc:  # noqa: BLE001 - a failed build is a value recorded on its row
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        return Measurement("failed", "build", detail[:2000]), time.perf_counter() - start
    return None, time.perf_counter() - start


def measure_models(device: Device, cases: list[ModelCase], policy: Policy, tables_dir: Path, cache_dir: Path,
                   force: bool = False, on_row: Callable[[dict], None] | None = None,
                   on_wait: Callable[[str], None] | None = None) -> list[dict]:
    """Measure each model of ``cases`` once per pass of the device's protocol (a sweep over the
    models per pass), skipping passes already in ``device``'s model table unless ``force``; rows
    are written as they come. A model that fails to build gets one failed row. A device given up
    midway raises :class:`TransportError` (the rows written before are kept)."""
    with Session(device, policy, tables_dir, models=True, on_wait=on_wait) as session:
        counts = {} if force else session.done("model_id")
        todo = []
        for case in cases:
            layers = model_layers(case.model, case.input_shape)
            key = model_id(case.name, case.input_shape, layers)
            if device.protocol.passes > counts.get(key, 0):
                todo.append((case, layers, key, device.protocol.passes - counts.get(key, 0)))
        rows: list[dict] = []
        if not todo:
            return rows
        session.open()
        with tempfile.TemporaryDirectory(prefix="hwloop-model-") as scratch:
            built = []
            for index, (case, layers, key, passes) in enumerate(todo):
                artifact = Path(scratch) / f"model-{os.getpid()}-{index}.so"
                failure, build_s = _build(case.model, tuple(case.input_shape), session.context, policy, cache_dir,
                                          artifact)
                io = None if failure else reference_io(case.model, tuple(case.input_shape))
                model = ModelBuild(case.name, key, tuple(case.input_shape), layers, artifact, io, build_s, failure)
                built.append((model, 1 if failure else passes))
            for sweep in range(max(passes for _, passes in built)):
                for batch in batched([m for m, passes in built if sweep < passes], device.protocol.batch):
                    measured = session.models(batch)
                    if measured is None:
                        raise TransportError(session.lost)
                    rows += measured
                    for row in measured if on_row else []:
                        on_row(row)
    return rows
