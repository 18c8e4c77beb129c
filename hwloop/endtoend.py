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
from concurrent.futures import TimeoutError as BuildTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .builder import BuildPool, build_lowered, build_timeout, failure
from .graph import relax_module
from .registry import Device
from .rows import Context
from .runner import Measurement
from .schedules import Policy
from .session import ModelBuild, Session, batched
from .tracing import trace_layers
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


def _build(
    pool: BuildPool,
    model: nn.Module,
    input_shape: tuple[int, ...],
    context: Context,
    policy: Policy,
    artifact: Path,
    tasks: int,
) -> tuple[Measurement | None, float]:
    """Build ``model`` into ``artifact``: lowered here (torch's export), compiled in ``pool``'s worker
    within its policy's :func:`~hwloop.builder.build_timeout` for ``tasks`` layers (a hung compiler
    is killed with the worker). (None, seconds), or (the failed measurement, seconds)."""
    start = time.perf_counter()
    limit = build_timeout(policy.name, tasks)
    try:
        mod = relax_module(model, input_shape)
        error = pool.call(
            build_lowered, mod, context.target, policy.name, context.device.cc, pool.cache_dir, artifact
        ).result(timeout=limit)
    except BuildTimeout:
        pool.restart()
        error = f"the build did not finish within {limit:g} s (a hung compiler?)"
    except BrokenProcessPool:
        pool.restart()
        error = "the build worker died building this model"
    except Exception as exc:  # noqa: BLE001 - a failed lowering is a value recorded on its row
        error = failure(exc)
    return (Measurement("failed", "build", error) if error else None), time.perf_counter() - start


def measure_models(
    device: Device,
    cases: list[ModelCase],
    policy: Policy,
    tables_dir: Path,
    cache_dir: Path,
    force: bool = False,
    on_row: Callable[[dict], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> list[dict]:
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
        avoid = device.protocol.cpus if device.transport == "local" else None
        with (
            tempfile.TemporaryDirectory(prefix="hwloop-model-") as scratch,
            BuildPool(cache_dir, avoid_cpus=avoid, workers=1, with_torch=True) as pool,
        ):
            built = []
            for index, (case, layers, key, passes) in enumerate(todo):
                artifact = Path(scratch) / f"model-{os.getpid()}-{index}.so"
                failed, build_s = _build(
                    pool, case.model, tuple(case.input_shape), session.context, policy, artifact, len(layers)
                )
                io = None if failed else reference_io(case.model, tuple(case.input_shape))
                model = ModelBuild(case.name, key, tuple(case.input_shape), layers, artifact, io, build_s, failed)
                built.append((model, 1 if failed else passes))
            for sweep in range(max(passes for _, passes in built)):
                for batch in batched([m for m, passes in built if sweep < passes], device.protocol.batch):
                    measured = session.models(batch)
                    if measured is None:
                        raise TransportError(session.lost)
                    rows += measured
                    for row in measured if on_row else []:
                        on_row(row)
    return rows
