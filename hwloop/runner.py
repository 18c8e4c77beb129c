"""Timing built layers and whole models on a device through a TVM RPC session, with TVM's
evaluator semantics.

Each artifact is uploaded, checked once against torch, warmed up, then timed with
``time_evaluator(number, repeat, min_repeat_ms, cooldown)``. A measurement whose coefficient of
variation exceeds the protocol's ``max_cv`` is taken again, up to ``max_attempts`` times, and the
steadiest attempt is kept. Failures come back as values.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .kernels import random_inputs, reference, relative_error, tolerance
from .layers import LayerConfig
from .registry import Protocol
from .targets import runtime_device_type

MODEL_TOLERANCE = 1e-3  # relative error of a whole fp32 model against torch (folded batch norms, reordered sums)


@dataclass
class Measurement:
    """One timed layer or model: per-repeat latencies in ms, or the stage and error that stopped it."""

    status: str = "ok"
    stage: str | None = None
    error: str | None = None
    latencies_ms: list[float] = field(default_factory=list)
    attempts: int = 0
    check_error: float | None = None
    seconds: float = 0.0
    timing_s: float = 0.0

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @property
    def mean_ms(self) -> float | None:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else None

    @property
    def min_ms(self) -> float | None:
        return min(self.latencies_ms) if self.latencies_ms else None

    @property
    def std_ms(self) -> float | None:
        return statistics.pstdev(self.latencies_ms) if self.latencies_ms else None

    @property
    def cv(self) -> float | None:
        mean = self.mean_ms
        return self.std_ms / mean if mean else None


class Runner:
    """Measures artifacts on one device over an RPC session, reconnecting after a failure.

    Kernels run on the session's device of ``target``'s kind (its CPU for ``llvm``, its GPU for
    ``nvptx``/``cuda``).
    """

    def __init__(self, transport, protocol: Protocol, target: dict | None = None):
        self.transport = transport
        self.protocol = protocol
        self.device_type = runtime_device_type(target or {"kind": "llvm"})
        self._session = None
        self._stage = "connect"

    def measure(self, config: LayerConfig, artifact: str) -> Measurement:
        """Check the layer ``artifact`` against torch on the device, then time it."""
        return self._guarded(lambda session: self._measure_layer(session, config, artifact))

    def measure_model(self, artifact: str, data: np.ndarray, expected: np.ndarray) -> Measurement:
        """Check the whole-model ``artifact`` (a Relax executable) on ``data`` against ``expected``
        (torch's output), then time it end to end."""
        return self._guarded(lambda session: self._measure_model(session, artifact, data, expected))

    def _guarded(self, work) -> Measurement:
        start = time.perf_counter()
        self._stage = "connect"
        try:
            if self._session is None:
                self._session = self.transport.connect()
            result = work(self._session)
        except Exception as exc:  # noqa: BLE001 - the session may be gone; the row records why
            self._session = None
            result = Measurement("failed", self._stage, f"{type(exc).__name__}: {str(exc).strip()[:2000]}")
        result.seconds = time.perf_counter() - start
        return result

    @contextlib.contextmanager
    def _loaded(self, session, artifact: str):
        """The library ``artifact`` uploaded to the device and loaded there; removed afterwards."""
        name = Path(artifact).name
        self._stage = "upload"
        session.upload(artifact, target=name)
        try:
            self._stage = "load"
            yield session.load_module(name)
        finally:
            with contextlib.suppress(Exception):  # best effort: a dead session has nothing left to clean
                session.remove(name)

    def _measure_layer(self, session, config: LayerConfig, artifact: str) -> Measurement:
        import tvm

        with self._loaded(session, artifact) as module:
            self._stage = "check"
            device = session.device(self.device_type, 0)
            data, weight = random_inputs(config)
            args = [tvm.runtime.tensor(data, device), tvm.runtime.tensor(weight, device),
                    tvm.runtime.empty(config.output_shape, config.dtype, device)]
            module["main"](*args)
            error = relative_error(args[2].numpy(), reference(config, data, weight))
            if not error <= tolerance(config):
                return Measurement("mismatch", "check", f"output differs from torch: relative error {error:.3g}",
                                   check_error=error)
            self._stage = "run"
            return self._time(module, device, args, error)

    def _measure_model(self, session, artifact: str, data: np.ndarray, expected: np.ndarray) -> Measurement:
        import tvm
        from tvm import relax

        with self._loaded(session, artifact) as module:
            self._stage = "check"
            device = session.cpu(0)
            vm = relax.VirtualMachine(module, device)
            args = [tvm.runtime.tensor(data, device)]
            error = relative_error(vm["main"](*args).numpy(), expected)
            if not error <= MODEL_TOLERANCE:
                return Measurement("mismatch", "check", f"output differs from torch: relative error {error:.3g}",
                                   check_error=error)
            self._stage = "run"
            return self._time(vm, device, args, error)

    def _time(self, module, device, args, check_error: float) -> Measurement:
        """Warm up, then time ``module``'s (a library's or a VM's) ``main`` on ``args``."""
        start = time.perf_counter()
        p = self.protocol
        if p.warmup:
            module.time_evaluator("main", device, number=p.warmup, repeat=1)(*args)
        evaluator = module.time_evaluator("main", device, number=p.number, repeat=p.repeat,
                                          min_repeat_ms=p.min_repeat_ms, cooldown_interval_ms=p.cooldown_ms)
        best = None
        for attempt in range(1, p.max_attempts + 1):
            latencies = [seconds * 1e3 for seconds in evaluator(*args).results]
            candidate = Measurement(latencies_ms=latencies, attempts=attempt, check_error=check_error)
            if best is None or candidate.cv < best.cv:
                best = candidate
            best.attempts = attempt
            if candidate.cv <= p.max_cv:
                break
        best.timing_s = time.perf_counter() - start
        return best
