"""Collection on several devices at once, surviving the faults of real boards.

Each device is measured by its own worker process (TVM's RPC client holds the GIL while it waits
for a board, so boards in one process would take turns), one measurement at a time, in a
:class:`~hwloop.session.Session` (which retries after faults and gives a board up that stays
away; the others go on). This process holds every device's table while its workers write their
rows into it. Builds run once in a shared pool for every device with the same target and cross
compiler. Every row is written as soon as it exists, so nothing measured is lost, a measurement
lost in flight is taken again rather than recorded twice, and a re-run measures only what is
missing. As in a collection on one device, what a device was too busy to time quietly, or its
trials disagreed on, is taken again at the end (:func:`hwloop.collect.retakes`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as BuildTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import tables
from .builder import BuildJob, BuildPool, Built, build_timeout
from .collect import Summary, pending, planned_summary, retakes
from .layers import LayerConfig
from .registry import Device
from .rows import Context
from .schedules import Policy


@dataclass
class BoardRun:
    """One device's part of a fleet collection: its summary (``summary.error``: why it was given
    up, if it was) and the workers that measured it."""

    summary: Summary
    workers: int = 1

    @property
    def error(self) -> str | None:
        return self.summary.error


def _board(device: Device, policy: Policy, tables_dir: Path, cache_dir: Path, jobs, results) -> None:
    """Worker process: measure what arrives on ``jobs`` on ``device``, report on ``results``."""
    from .lifetime import die_with_parent
    from .session import Session
    from .transports import TransportError

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Session(device, policy, tables_dir, journal_only=True, cache_dir=cache_dir) as session:
            session.open()
            while batch := _next_batch(jobs, device.protocol.batch):
                rows = session.layers(batch)
                if rows is None:
                    results.put(("lost", device.name, session.lost))
                    return
                for row in rows:
                    results.put(("row", device.name, row))
    except (TransportError, tables.TableError, OSError) as exc:
        results.put(("lost", device.name, str(exc)))
        return
    results.put(("done", device.name, None))


def _next_batch(jobs, size: int) -> list[Built]:
    """Up to ``size`` builds from ``jobs``: waits for the first, takes those ready behind it; empty
    once the feeder's end mark (None) came."""
    batch = []
    while len(batch) < size:
        try:
            built = jobs.get(timeout=None if not batch else 0.05)
        except queue.Empty:
            break
        if built is None:
            jobs.put(None)  # seen again by the next call, which then ends
            break
        batch.append(built)
    return batch


class SharedBuilds:
    """Each distinct build job submitted once to the pool; every device waiting on it gets the result.

    A build that outlasts its policy's timeout fails (for every device); a pool broken by a dying
    worker is restarted once, whichever device noticed first, and the build asked again."""

    def __init__(self, pool: BuildPool):
        self.pool = pool
        self._futures: dict[tuple, tuple[Future, int]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def _key(self, job: BuildJob) -> tuple:
        return job.key(""), job.policy

    def submit(self, job: BuildJob) -> tuple[Future, int]:
        with self._lock:
            if self._key(job) not in self._futures:
                self._futures[self._key(job)] = self.pool.submit(job), self._generation
            return self._futures[self._key(job)]

    def get(self, job: BuildJob) -> Built:
        limit = build_timeout(job.policy)
        for _ in range(3):
            future, generation = self.submit(job)
            try:
                built = future.result(timeout=limit)
                return Built(job, built.artifact, built.error, built.seconds, built.cached)
            except BuildTimeout:
                failed = Built(job, None, f"the build did not finish within {limit:g} s (a hung compiler?)", limit)
                self._restart(generation, job, failed)
                return failed
            except (BrokenProcessPool, CancelledError):
                self._restart(generation)
        return Built(job, None, "the build worker died building this config", 0.0)

    def _restart(self, generation: int, job: BuildJob | None = None, failed: Built | None = None) -> None:
        """Restart the pool unless it was restarted since ``generation``; keep the builds done (and
        ``failed`` as ``job``'s result)."""
        with self._lock:
            if generation == self._generation:
                self.pool.restart()
                self._generation += 1
                self._futures = {
                    k: (f, g)
                    for k, (f, g) in self._futures.items()
                    if f.done() and not f.cancelled() and not f.exception()
                }
            if job is not None:
                done: Future = Future()
                done.set_result(failed)
                self._futures[self._key(job)] = done, self._generation


def collect_fleet(
    devices: list[Device],
    configs: list[LayerConfig],
    policy: Policy,
    tables_dir: Path,
    cache_dir: Path,
    force: bool = False,
    on_start: Callable[[str, int], None] | None = None,
    on_row: Callable[[str, dict], None] | None = None,
    on_lost: Callable[[str, str], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> list[BoardRun]:
    """Measure ``configs`` on every device of ``devices`` in parallel; one :class:`BoardRun` per
    device. Each device's table is held from planning to the end (``on_wait`` hears of a run
    that holds one already). ``on_start`` hears each device's measurements to take, and again
    with the retakes where the end of the collection adds some."""
    start = time.perf_counter()
    contexts = {d.name: Context.of(d, policy) for d in devices}
    todo, runs = {}, {}
    with contextlib.ExitStack() as held:
        for d in devices:
            held.enter_context(tables.Writer(tables_dir, d.name, on_wait=on_wait))
            todo[d.name] = pending(configs, contexts[d.name], tables_dir, force)
            runs[d.name] = BoardRun(planned_summary(d, policy, configs, todo[d.name]))
        for d in devices:
            if on_start:
                on_start(d.name, len(todo[d.name]))
        busy = [d for d in devices if todo[d.name]]
        if busy:
            avoid = sorted({c for d in busy if d.transport == "local" for c in (d.protocol.cpus or [])})
            with BuildPool(cache_dir, avoid_cpus=avoid) as pool:
                builds = SharedBuilds(pool)
                _run(busy, todo, contexts, policy, tables_dir, cache_dir, builds, runs, on_row, on_lost)
                again, replacing = _retakes(busy, todo, runs)
                for name, configs_again in again.items():
                    if on_start:
                        on_start(name, len(todo[name]) + len(configs_again))
                if again:
                    retake = [d for d in busy if d.name in again]
                    _run(
                        retake, again, contexts, policy, tables_dir, cache_dir, builds, runs, on_row, on_lost, replacing
                    )
    for run in runs.values():
        run.summary.wall_s = time.perf_counter() - start
    return list(runs.values())


def _retakes(devices, todo, runs) -> tuple[dict, dict]:
    """Per device still measuring, :func:`hwloop.collect.retakes`: the configs to take once more and
    the rows their retakes replace."""
    again, replacing = {}, {}
    for d in devices:
        summary = runs[d.name].summary
        if summary.error:
            continue
        configs, unsettled = retakes(summary, todo[d.name], d.protocol)
        if configs:
            again[d.name], replacing[d.name] = configs, unsettled
            summary.retaken = len(configs)
    return again, replacing


def _slots(device: Device) -> int:
    """Workers for ``device``: one per board of a tracker pool, else one."""
    if device.transport != "tracker":
        return 1
    from .transports.tracker import pool_size

    try:
        return max(1, pool_size(device))
    except Exception:  # noqa: BLE001 - the worker reports an unreachable tracker with its own error
        return 1


def _run(devices, todo, contexts, policy, tables_dir, cache_dir, builds, runs, on_row, on_lost, replacing=None) -> None:
    """Measure each device's ``todo`` in worker processes; a row of a config in ``replacing[device]``
    (config id → row index) replaces that row of the device's summary, others are appended."""
    replacing = {name: dict(rows) for name, rows in (replacing or {}).items()}
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    jobs = {d.name: spawn.Queue(maxsize=d.protocol.batch + 1) for d in devices}
    slots = {d.name: _slots(d) for d in devices}
    stopped: set[str] = set()
    order = [
        (d, c) for i in range(max(len(t) for t in todo.values())) for d in devices for c in todo[d.name][i : i + 1]
    ]
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

    workers = {
        (d.name, i): spawn.Process(
            target=_board,
            args=(d, policy, tables_dir, cache_dir, jobs[d.name], results),
            name=f"hwloop-board-{d.name}-{i}",
            daemon=True,
        )
        for d in devices
        for i in range(slots[d.name])
    }
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
                for (name, _), process in workers.items():
                    if active[name] and not process.is_alive() and process.exitcode not in (0, None):
                        _lose(
                            name,
                            f"the worker measuring {name} exited ({process.exitcode})",
                            runs,
                            stopped,
                            active,
                            on_lost,
                        )
                continue
            if kind == "row":
                runs[name].summary.put(payload, replacing.get(name, {}))
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
    runs[name].summary.error = error
    stopped.add(name)
    active[name] = 0
    if on_lost:
        on_lost(name, error)
