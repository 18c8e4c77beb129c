"""Collection on several devices at once, surviving the faults of real boards.

Each device is measured by its own worker process (TVM's RPC client holds the GIL while it waits
for a board, so boards in one process would take turns), one measurement at a time. Builds run
once in a shared pool for every device with the same target and cross compiler. A fault of the
link or the board (``transport.fault()`` names it) is retried after a reconnect, with bounded
retries and backoff; a board that stays away is given up with its error and the others go on.
Every row is written as soon as it exists, so nothing measured is lost, a measurement lost in
flight is taken again rather than recorded twice, and a re-run measures only what is missing.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import tables
from .builder import BuildJob, BuildPool, Built
from .collect import Context, Summary, make_row, pending, planned_summary
from .layers import LayerConfig
from .registry import Device
from .runner import Measurement, Runner
from .schedules import Policy


@dataclass
class BoardRun:
    """One device's part of a fleet collection: its summary, and why it was given up (if it was)."""

    summary: Summary
    error: str | None = None
    workers: int = 1


def measure(runner: Runner, transport, config: LayerConfig, artifact: str, retries: int) -> tuple[Measurement, bool]:
    """``config`` measured, retried after faults of the board or the link; and whether the board is lost.

    A config that faults the board on every attempt fails alone: the next one starts on a fresh
    connection, and only a board that cannot be reconnected is lost."""
    for _ in range(retries + 1):
        m = runner.measure(config, artifact)
        fault = transport.fault() if m.status == "failed" and hasattr(transport, "fault") else None
        if fault is None:
            return m, False
        m.error = f"{fault} ({m.error})"
        if m.stage == "connect":
            return m, True
    return m, False


def _board(device: Device, policy: Policy, tables_dir: Path, jobs, results) -> None:
    """Worker process: measure what arrives on ``jobs`` on ``device``, report on ``results``."""
    from .lifetime import die_with_parent
    from .transports import TransportError, open_transport

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    context = Context.of(device, policy)
    try:
        transport = open_transport(device)
    except (TransportError, OSError) as exc:
        results.put(("lost", device.name, str(exc)))
        return
    try:
        runner = Runner(transport, device.protocol, context.target)
        while (built := jobs.get()) is not None:
            config = built.job.config
            lost = False
            if built.artifact:
                m, lost = measure(runner, transport, config, built.artifact, device.link.retries)
            else:
                m = Measurement("failed", "build", built.error)
            row = make_row(context, config, built, m, transport.fingerprint())
            tables.append(tables_dir, device.name, [row])
            results.put(("row", device.name, row))
            if lost:
                results.put(("lost", device.name, transport.fault() or m.error))
                return
    finally:
        transport.close()
    results.put(("done", device.name, None))


class SharedBuilds:
    """Each distinct build job submitted once to the pool; every device waiting on it gets the result."""

    def __init__(self, pool: BuildPool):
        self.pool = pool
        self._futures: dict[tuple, Future] = {}
        self._lock = threading.Lock()

    def _key(self, job: BuildJob) -> tuple:
        return job.key(""), job.policy

    def submit(self, job: BuildJob) -> None:
        with self._lock:
            if self._key(job) not in self._futures:
                self._futures[self._key(job)] = self.pool.submit(job)

    def get(self, job: BuildJob) -> Built:
        self.submit(job)
        try:
            built = self._futures[self._key(job)].result()
        except BrokenProcessPool:
            with self._lock:
                self.pool.restart()
                self._futures = {k: f for k, f in self._futures.items() if f.done() and not f.exception()}
            try:
                built = self.pool.submit(job).result()
            except BrokenProcessPool:
                self.pool.restart()
                return Built(job, None, "the build worker died building this config", 0.0)
        return Built(job, built.artifact, built.error, built.seconds, built.cached)


def collect_fleet(devices: list[Device], configs: list[LayerConfig], policy: Policy, tables_dir: Path,
                  cache_dir: Path, force: bool = False,
                  on_start: Callable[[str, int], None] | None = None,
                  on_row: Callable[[str, dict], None] | None = None,
                  on_lost: Callable[[str, str], None] | None = None) -> list[BoardRun]:
    """Measure ``configs`` on every device of ``devices`` in parallel; one :class:`BoardRun` per device."""
    start = time.perf_counter()
    contexts = {d.name: Context.of(d, policy) for d in devices}
    todo, runs = {}, {}
    for d in devices:
        todo[d.name], anchored = pending(configs, contexts[d.name], tables_dir, force)
        runs[d.name] = BoardRun(planned_summary(d, policy, configs, todo[d.name], anchored))
    for d in devices:
        if on_start:
            on_start(d.name, len(todo[d.name]))
    busy = [d for d in devices if todo[d.name]]
    if busy:
        avoid = sorted({c for d in busy if d.transport == "local" for c in (d.protocol.cpus or [])})
        with BuildPool(cache_dir, avoid_cpus=avoid) as pool:
            _run(busy, todo, contexts, policy, tables_dir, SharedBuilds(pool), runs, on_row, on_lost)
    for run in runs.values():
        run.summary.wall_s = time.perf_counter() - start
    return list(runs.values())


def _slots(device: Device) -> int:
    """Workers for ``device``: one per board of a tracker pool, else one."""
    if device.transport != "tracker":
        return 1
    from .transports.tracker import pool_size

    try:
        return max(1, pool_size(device))
    except Exception:  # noqa: BLE001 - the worker reports an unreachable tracker with its own error
        return 1


def _run(devices, todo, contexts, policy, tables_dir, builds, runs, on_row, on_lost) -> None:
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    jobs = {d.name: spawn.Queue(maxsize=2) for d in devices}
    slots = {d.name: _slots(d) for d in devices}
    stopped: set[str] = set()
    order = [(d, c) for i in range(max(len(t) for t in todo.values())) for d in devices
             for c in todo[d.name][i:i + 1]]
    for d, c in order:
        builds.submit(BuildJob(c, contexts[d.name].target, policy.name, d.cc))

    def put(name: str, item) -> bool:
        while name not in stopped:
            try:
                jobs[name].put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def feed(device: Device) -> None:
        for config in todo[device.name]:
            if not put(device.name, builds.get(BuildJob(config, contexts[device.name].target, policy.name, device.cc))):
                return
        for _ in range(slots[device.name]):
            put(device.name, None)

    workers = {(d.name, i): spawn.Process(target=_board, args=(d, policy, tables_dir, jobs[d.name], results),
                                          name=f"hwloop-board-{d.name}-{i}", daemon=True)
               for d in devices for i in range(slots[d.name])}
    for process in workers.values():
        process.start()
    for d in devices:
        runs[d.name].workers = slots[d.name]
        threading.Thread(target=feed, args=(d,), daemon=True).start()
    active = {name: slots[name] for name in slots}
    finished = False
    try:
        while any(active.values()):
            try:
                kind, name, payload = results.get(timeout=0.5)
            except queue.Empty:
                for (name, i), process in workers.items():
                    if active[name] and not process.is_alive() and process.exitcode not in (0, None):
                        _lose(name, f"the worker measuring {name} exited ({process.exitcode})", runs, stopped,
                              active, on_lost)
                continue
            if kind == "row":
                runs[name].summary.rows.append(payload)
                if on_row:
                    on_row(name, payload)
            elif kind == "lost":
                _lose(name, payload, runs, stopped, active, on_lost)
            else:
                active[name] -= 1
        finished = True
    finally:
        stopped.update(slots)
        for process in workers.values():
            process.join(timeout=10 if finished else 0.1)
            if process.is_alive():
                process.kill()


def _lose(name, error, runs, stopped, active, on_lost) -> None:
    runs[name].error = error
    stopped.add(name)
    active[name] = 0
    if on_lost:
        on_lost(name, error)
