"""Timing built layers and whole models on a device through a TVM RPC session.

A measurement is a few independent *trials*, interleaved across the artifacts of a batch: each
artifact is uploaded, loaded and checked once against torch, then every round gives each artifact
not yet settled one trial, in a new random order; a trial loads a fresh copy of the artifact (the
device maps it anew) and runs it on fresh buffers, since where code and data land can move a small
kernel's latency by tens of per cent. Where the device's RPC server has ``hwloop.trial``
(:mod:`hwloop.transports.trial`), a layer's trial is one call that copies the uploaded artifact
there; elsewhere (a tracker's plain server, whole models) this machine uploads a new copy and drives
the trial call by call. A trial is TVM's ``time_evaluator`` (``warmup`` untimed runs, then
``repeat`` repeats of ``number`` runs lasting at least ``min_repeat_ms``; with ``flush``, a layer's
weights and output are flushed from the CPU caches before each repeat of one run, while whole models
always run warm); its latency is its repeats' ``statistic`` (by default the fastest), and around it
the device says what its timing process shared the CPU with (:mod:`hwloop.transports.usage`): a
trial during which the process waited for its CPU more than ``max_wait`` of the time, or the
hypervisor stole more than ``max_steal`` of it, is *disturbed*; it is dropped and taken again in a
later round, after a pause that grows while the device stays busy (after ``max_disturbed`` of them,
the device stays busy: trials are kept and the measurement is not *quiet*). With a ``sentinel``, a
fixed small conv is timed before and after each round: a round before and after which it ran more
than ``sentinel`` times slower than its fastest (in this session or on the rows of the table, which
record it) is disturbed as a whole, since such a state of the host slows every kernel at once and
the trials of one measurement, taken within it, agree (one slow reading alone is a blip of the
sentinel's own, not a state). An artifact settles once it has ``trials`` trials and each lies within
``agree`` of their median, or after ``max_trials``; its latency is the mean of its trials'
latencies, the fastest and slowest left out from five trials on: a small kernel whose loads land in
two states of the device gets the mean of both, as the loads of a deployed model meet them.
"""

from __future__ import annotations

import contextlib
import functools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .kernels import relative_error, tolerance
from .layers import LayerConfig
from .references import check_io
from .registry import Protocol
from .targets import runtime_device_type
from .transports.trial import parse as parse_trial
from .transports.trial import time_main
from .transports.usage import parse as parse_usage
from .trust import TRIM_FROM

MODEL_TOLERANCE = 1e-3  # relative error of a whole fp32 model against torch (folded batch norms, reordered sums)
PAUSE_S = 0.25  # the first pause after a disturbed round; doubled while rounds stay disturbed, up to MAX_PAUSE_S
MAX_PAUSE_S = 4.0
SENTINEL = LayerConfig("conv2d", 16, 16, 14, 14, kernel=3, padding=1)  # timed between rounds of trials
SENTINEL_TIMING = (10, 1, 3, 10, 0)  # warm-up, number, repeat, min_repeat_ms, cooldown_ms: 3 repeats of 10 ms, warm


STATISTICS = {"min": min, "median": statistics.median}  # a trial's latency from its repeats (Protocol.statistic)


def estimator(protocol: Protocol) -> str:
    """How a measurement's latency is made from its trials under ``protocol`` (a row's ``estimator``)."""
    return "trimmed-mean-of-trials" if protocol.statistic == "median" else "trimmed-mean-of-trial-minima"


@dataclass
class Trial:
    """One trial: its repeats' latencies (ms), the shares of its wall time that the timing process
    waited for its CPU (``wait``) and that the hypervisor stole (``steal``), None where the device
    cannot tell, and the ``statistic`` that makes its latency from its repeats."""

    latencies_ms: list[float]
    wait: float | None = None
    steal: float | None = None
    statistic: str = Protocol.model_fields["statistic"].default

    @property
    def ms(self) -> float:
        """The trial's latency: its repeats' ``statistic``."""
        return STATISTICS[self.statistic](self.latencies_ms)

    def disturbed(self, protocol: Protocol) -> bool:
        return (self.wait or 0.0) > protocol.max_wait or (self.steal or 0.0) > protocol.max_steal


@dataclass
class Measurement:
    """One timed layer or model (its kept trials, how many disturbed ones were dropped and how many
    were kept because the device stayed busy, and the slowest state the sentinel found around them:
    of each kept round, the faster of its readings before and after), or the stage and error that
    stopped it."""

    status: str = "ok"
    stage: str | None = None
    error: str | None = None
    trials: list[Trial] = field(default_factory=list)
    disturbed: int = 0
    kept_disturbed: int = 0
    sentinel_ms: float | None = None
    check_error: float | None = None
    seconds: float = 0.0
    timing_s: float = 0.0

    @property
    def quiet(self) -> bool:
        """Whether every kept trial was quiet."""
        return self.kept_disturbed == 0

    @property
    def latencies_ms(self) -> list[float]:
        """Every repeat of the kept trials."""
        return [latency for trial in self.trials for latency in trial.latencies_ms]

    @property
    def trial_ms(self) -> list[float]:
        """Each kept trial's latency."""
        return [trial.ms for trial in self.trials]

    @property
    def latency_ms(self) -> float | None:
        """The measured latency: the mean of the trials' latencies, the fastest and the slowest left
        out from :data:`TRIM_FROM` trials on. Trials that disagree landed in different states of
        the device; their mean weighs the states as often as loads meet them."""
        if not self.trials:
            return None
        trials = sorted(self.trial_ms)
        return statistics.fmean(trials[1:-1] if len(trials) >= TRIM_FROM else trials)

    @property
    def spread(self) -> float | None:
        """How far apart the trials landed: the slowest trial's latency over the fastest's, minus one."""
        return max(self.trial_ms) / min(self.trial_ms) - 1 if self.trials else None

    @property
    def mean_ms(self) -> float | None:
        return statistics.fmean(self.latencies_ms) if self.trials else None

    @property
    def min_ms(self) -> float | None:
        return min(self.latencies_ms) if self.trials else None

    @property
    def std_ms(self) -> float | None:
        return statistics.pstdev(self.latencies_ms) if self.trials else None

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of the repeats within the trials (each around its trial's mean)."""
        if not self.trials:
            return None
        return statistics.fmean(
            statistics.pstdev(t.latencies_ms) / statistics.fmean(t.latencies_ms) for t in self.trials
        )

    def settled(self, protocol: Protocol) -> bool:
        """Whether no more trials are needed: at least ``trials``, each within ``agree`` of their
        median, or ``max_trials`` taken."""
        if len(self.trials) >= protocol.max_trials:
            return True
        if len(self.trials) < protocol.trials:
            return False
        middle = statistics.median(self.trial_ms)
        return all(abs(m / middle - 1) <= protocol.agree for m in self.trial_ms)


class Sentinel:
    """The sentinel's fastest reading (a trial's latency, in ms), from ``fastest`` on, and how many
    were taken (``count``); a reading is slow when it exceeds the fastest by more than ``slack``."""

    def __init__(self, slack: float, fastest: float | None = None):
        self.slack = slack
        self.fastest = fastest
        self.count = 0

    def slow(self, ms: float) -> bool:
        """Record the reading ``ms``; whether it is slow."""
        self.count += 1
        self.fastest = ms if self.fastest is None else min(self.fastest, ms)
        return ms > self.slack * self.fastest


@dataclass
class _Open:
    """An artifact checked in the session, ready for trials: how to take one, and its measurement."""

    trial: Callable[[], Trial]
    measurement: Measurement


class Runner:
    """Measures artifacts on one device over an RPC session, reconnecting after a failure.

    Kernels run on the session's device of ``target``'s kind (its CPU for ``llvm``, its GPU for
    ``nvptx``/``cuda``). ``references``: the folder where torch's outputs that layers are checked
    against are kept (:func:`hwloop.references.check_io`); without it each check computes its own.
    ``sentinel``: :data:`SENTINEL` built for ``target``, timed between rounds where the protocol
    asks for it (a sentinel that fails its check is left out); ``sentinel_ms``: its fastest reading
    on the device so far (the table's).
    """

    def __init__(
        self,
        transport,
        protocol: Protocol,
        target: dict | None = None,
        references: Path | None = None,
        sentinel: str | None = None,
        sentinel_ms: float | None = None,
    ):
        self.transport = transport
        self.protocol = protocol
        self.sentinel = sentinel if protocol.sentinel else None
        self.sentinel_readings = Sentinel(protocol.sentinel, sentinel_ms) if self.sentinel else None
        self.device_type = runtime_device_type(target or {"kind": "llvm"})
        self.references = references
        self._session = None
        self._usage = self._board_trial = None
        self._uploaded: list[str] = []
        self._stage = "connect"
        self._cpus = ",".join(map(str, protocol.cpus or []))

    def measure(self, config: LayerConfig, artifact: str) -> Measurement:
        """Check the layer ``artifact`` against torch on the device, then time it."""
        return self.measure_layers([(config, artifact)])[0]

    def measure_layers(self, batch: list[tuple[LayerConfig, str]]) -> list[Measurement]:
        """Check and time a batch of built layers, their trials interleaved; one measurement each."""
        return self._batch([lambda a=artifact, c=config: self._open_layer(a, c) for config, artifact in batch])

    def measure_models(self, batch: list[tuple[str, np.ndarray, np.ndarray]]) -> list[Measurement]:
        """Check each whole-model ``artifact`` (a Relax executable) on ``data`` against ``expected``
        (torch's output), then time them end to end, their trials interleaved."""
        return self._batch(
            [lambda a=artifact, d=data, e=expected: self._open_model(a, d, e) for artifact, data, expected in batch]
        )

    def _batch(self, batch: list[Callable[[], Measurement | _Open]]) -> list[Measurement]:
        start = time.perf_counter()
        results: list[Measurement | None] = [None] * len(batch)
        self._stage = "connect"
        try:
            if self._session is None:
                self._session = self.transport.connect()
                self._usage = _remote_function(self._session, "hwloop.usage")
                self._board_trial = _remote_function(self._session, "hwloop.trial")
            opened: dict[int, _Open] = {}
            for index, opener in enumerate(batch):
                done = opener()
                if isinstance(done, Measurement):
                    results[index] = done
                else:
                    opened[index] = done
            sentinel = self._open_layer(self.sentinel, SENTINEL, sentinel=True) if self.sentinel and opened else None
            self._rounds(list(opened.values()), sentinel if isinstance(sentinel, _Open) else None)
            for index, item in opened.items():
                results[index] = item.measurement
            self._remove_uploaded()
        except Exception as exc:  # noqa: BLE001 - the session may be gone; the rows record why
            self._session = self._usage = self._board_trial = None
            self._uploaded = []
            error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
            results = [r if r is not None else Measurement("failed", self._stage, error) for r in results]
        elapsed = time.perf_counter() - start
        for result in results:
            result.seconds = elapsed / len(batch)
        return results

    def _upload(self, artifact: str) -> str:
        """The library ``artifact`` uploaded into the session's folder under a new name (the device
        maps each file anew); the name."""
        name = f"{Path(artifact).stem}-{random.getrandbits(32):08x}{Path(artifact).suffix}"
        self._stage = "upload"
        self._session.upload(artifact, target=name)
        return name

    def _load(self, artifact: str):
        """A fresh copy of the library ``artifact`` loaded in the session (uploaded under a new name;
        the file is removed once loaded)."""
        name = self._upload(artifact)
        try:
            self._stage = "load"
            return self._session.load_module(name)
        finally:
            with contextlib.suppress(Exception):  # best effort: a dead session has nothing left to clean
                self._session.remove(name)

    def _remove_uploaded(self) -> None:
        """Remove the libraries left in the session's folder for trials on the device."""
        while self._uploaded:
            with contextlib.suppress(Exception):  # best effort, as in _load
                self._session.remove(self._uploaded.pop())

    def _open_layer(self, artifact: str, config: LayerConfig, sentinel: bool = False):
        """``artifact`` loaded and checked, ready for trials (the sentinel's: timed briefly and warm)."""
        import tvm

        if self._board_trial is not None:
            name = self._upload(artifact)
            self._uploaded.append(name)
            self._stage = "load"
            module = self._session.load_module(name)
        else:
            module = self._load(artifact)
        self._stage = "check"
        device = self._session.device(self.device_type, 0)
        data, weight, expected = check_io(config, self.references)

        def make_args():
            return [
                tvm.runtime.tensor(data, device),
                tvm.runtime.tensor(weight, device),
                tvm.runtime.empty(config.output_shape, config.dtype, device),
            ]

        args = make_args()
        module["main"](*args)
        error = relative_error(args[2].numpy(), expected)
        if not error <= tolerance(config):
            return Measurement(
                "mismatch", "check", f"output differs from torch: relative error {error:.3g}", check_error=error
            )
        measurement = Measurement(check_error=error)
        timing = (SENTINEL_TIMING, False) if sentinel else (self._timing(), self.protocol.flush)
        if self._board_trial is not None:  # the check's buffers, copied afresh on the device for each trial
            return _Open(lambda: self._trial_on_board(name, args, measurement, *timing), measurement)
        load = functools.partial(self._load, artifact)
        return _Open(lambda: self._trial(load, device, make_args, measurement, *timing), measurement)

    def _open_model(self, artifact: str, data: np.ndarray, expected: np.ndarray):
        import tvm
        from tvm import relax

        device = self._session.device(self.device_type, 0)

        def load_vm():
            return relax.VirtualMachine(self._load(artifact), device)

        def make_args():
            return [tvm.runtime.tensor(data, device)]

        vm = load_vm()
        self._stage = "check"
        error = relative_error(vm["main"](*make_args()).numpy(), expected)
        if not error <= MODEL_TOLERANCE:
            return Measurement(
                "mismatch", "check", f"output differs from torch: relative error {error:.3g}", check_error=error
            )
        measurement = Measurement(check_error=error)
        return _Open(lambda: self._trial(load_vm, device, make_args, measurement, self._timing(), False), measurement)

    def _rounds(self, opened: list[_Open], sentinel: _Open | None) -> None:
        """Trials in rounds over the artifacts not yet settled, each round in a new order; a disturbed
        trial (every trial of a round the ``sentinel`` found slow at both ends) is dropped (and
        counted), and the next round waits a little longer first."""
        p = self.protocol
        pause = 0.0
        before = None
        while pending := [o for o in opened if not o.measurement.settled(p)]:
            random.shuffle(pending)
            before = before or self._reading(sentinel)
            taken = [(item.measurement, item.trial()) for item in pending]
            after = self._reading(sentinel)
            disturbed = False
            for m, trial in taken:
                if (before[1] and after[1]) or trial.disturbed(p):
                    disturbed = True
                    if m.disturbed < p.max_disturbed:
                        m.disturbed += 1
                        continue
                    m.kept_disturbed += 1
                m.trials.append(trial)
                if sentinel is not None:
                    m.sentinel_ms = max(m.sentinel_ms or 0.0, min(before[0], after[0]))
            pause = min(max(PAUSE_S, 2 * pause), MAX_PAUSE_S) if disturbed else 0.0
            time.sleep(pause)
            before = None if pause else after  # read again after a pause

    def _reading(self, sentinel: _Open | None) -> tuple[float | None, bool]:
        """A trial of the sentinel, taken now: its latency (ms), and whether it is slow; (None, False)
        without a sentinel."""
        if sentinel is None:
            return None, False
        ms = sentinel.trial().ms
        return ms, self.sentinel_readings.slow(ms)

    def _trial(
        self,
        load: Callable[[], object],
        device,
        make_args: Callable[[], list],
        m: Measurement,
        timing: tuple,
        flush: bool,
    ) -> Trial:
        """One trial driven from here, with ``timing`` (:meth:`_timing`): a fresh copy loaded
        (``load``: a module, or a VM over one), on fresh buffers, with what the device says of its
        CPU meanwhile. A whole model is never flushed: it runs in its steady state, its layers
        evicting each other's weights."""
        start = time.perf_counter()
        module = load()
        self._stage = "run"
        before, after, seconds = time_main(module, device, make_args(), *timing, flush, self._read_usage)
        m.timing_s += time.perf_counter() - start
        return Trial([s * 1e3 for s in seconds], *_shares(before, after), self.protocol.statistic)

    def _trial_on_board(self, name: str, args: list, m: Measurement, timing: tuple, flush: bool) -> Trial:
        """One trial in one call of the device's ``hwloop.trial``: a fresh copy of the uploaded
        library ``name`` loaded there, on fresh copies of ``args`` (the last one, the output, empty)."""
        start = time.perf_counter()
        self._stage = "run"
        answer = self._board_trial(name, self.device_type, 0, *timing, flush, self._cpus, 1, *args)
        before, after, seconds = parse_trial(answer)
        m.timing_s += time.perf_counter() - start
        return Trial(
            [s * 1e3 for s in seconds], *_shares(parse_usage(before), parse_usage(after)), self.protocol.statistic
        )

    def _timing(self) -> tuple:
        """The protocol's fields a trial times with: warm-up, number, repeat, min_repeat_ms, cooldown_ms."""
        p = self.protocol
        return p.warmup, p.number, p.repeat, p.min_repeat_ms, p.cooldown_ms

    def _read_usage(self) -> dict | None:
        return parse_usage(self._usage(self._cpus)) if self._usage is not None else None


def _remote_function(session, name: str):
    """The device's function ``name`` (``hwloop.usage``, ``hwloop.trial``), or None where its RPC
    server does not have it."""
    try:
        return session.get_function(name)
    except Exception:  # noqa: BLE001 - a plain TVM RPC server (a tracker's board) has none
        return None


def _shares(before: dict | None, after: dict | None) -> tuple[float | None, float | None]:
    """(wait, steal): the shares of a trial's time the timing process waited for its CPU and the
    hypervisor stole from the timing CPUs, from two :func:`hwloop.transports.usage.usage` readings."""
    if before is None or after is None:
        return None, None
    ran, waited = after["cpu_ns"] - before["cpu_ns"], after["wait_ns"] - before["wait_ns"]
    wait = waited / (ran + waited) if before["cpu_ns"] >= 0 and ran + waited > 0 else None
    total, stolen = after["total_ns"] - before["total_ns"], after["steal_ns"] - before["steal_ns"]
    steal = stolen / total if before["total_ns"] >= 0 and total > 0 else None
    return wait, steal
