"""Host-side builds: a layer configuration (or a whole model) compiled for a device's target into a
shared library.

Layer builds are cached by (config, target, cross compiler, schedule policy, TVM version, the code
of the kernels and policies) and run in a pool of long-lived worker processes, so the device never
waits on the compiler. Whole models are compiled in such a pool too, where a hung compiler can be
killed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as BuildTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from . import nvptx
from .layers import LayerConfig
from .lifetime import die_with_parent
from .schedules import parse_policy
from .targets import canonical

BUILD_TIMEOUT_S = 300.0
TRIAL_TIMEOUT_S = 10.0


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A hash of the code that turns a config into a kernel (kernels, schedule policies, PTX fixes), so a
    changed rule never reuses a library built by the old one."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in [package / "kernels.py", package / "nvptx.py", *sorted((package / "schedules").glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BuildJob:
    """What to build: a layer, a resolved target, an optional cross compiler and a schedule policy."""

    config: LayerConfig
    target: dict
    policy: str
    cc: str | None = None

    def key(self, version: str) -> str:
        fields = [self.config.to_dict(), canonical(self.target), self.cc, self.policy, version, code_digest()]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Built:
    """A build's outcome: the library's path, or the error that stopped it."""

    job: BuildJob
    artifact: str | None
    error: str | None
    seconds: float
    cached: bool = False


def build(job: BuildJob, cache_dir: Path) -> Built:
    """Compile ``job`` (or take it from the cache); a failure is returned, not raised."""
    import tvm

    from .kernels import prim_module

    start = time.perf_counter()
    path = Path(cache_dir) / "builds" / f"{job.key(tvm_version())}.so"
    if path.exists():
        return Built(job, str(path), None, 0.0, cached=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = tvm.target.Target(job.target)
        prepare(target, job.cc)
        mod = parse_policy(job.policy).apply(prim_module(job.config), target, Path(cache_dir), job.config)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.so")
        export(tvm.compile(mod, target), target, job.cc, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - a failed build is a value recorded on its row
        return Built(job, None, failure(exc), time.perf_counter() - start)
    return Built(job, str(path), None, time.perf_counter() - start)


def build_lowered(mod, target: dict, policy: str, cc: str | None, cache_dir: Path, path: Path) -> str | None:
    """Compile a whole model, lowered to the Relax module ``mod`` (:func:`hwloop.graph.relax_module`),
    for ``target`` with ``policy`` into the library ``path``: None, or the error. Runs in the
    worker of a pool made ``with_torch``."""
    import tvm

    from .graph import compile_module

    try:
        tvm_target = tvm.target.Target(target)
        prepare(tvm_target, cc)
        scheduled = parse_policy(policy).apply(mod, tvm_target, Path(cache_dir))
        export(compile_module(scheduled, tvm_target), tvm_target, cc, path)
    except Exception as exc:  # noqa: BLE001 - a failed build is a value recorded on its row
        return failure(exc)
    return None


def failure(exc: Exception) -> str:
    """A failed build's error for its row: the exception's last line."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return detail.splitlines()[-1][:2000]


def build_timeout(policy: str, tasks: int = 1) -> float:
    """Seconds a build under ``policy`` may take: :data:`BUILD_TIMEOUT_S`, and
    :data:`TRIAL_TIMEOUT_S` more per measured candidate of a search (``tuned:N``, ``transfer:N``)
    for each of ``tasks`` searches (a whole model tunes each of its layers)."""
    return BUILD_TIMEOUT_S + TRIAL_TIMEOUT_S * parse_policy(policy).trials * tasks


def prepare(target, cc: str | None) -> None:
    """Check that code for ``target`` can be linked here with ``cc``, and set up its code generator."""
    _check_linker(target, cc)
    if target.kind.name == "nvptx":
        nvptx.prepare()


def export(executable, target, cc: str | None, path: Path) -> None:
    """Write ``executable`` (built for ``target``) as the shared library ``path``, linked with ``cc``."""
    executable.export_library(str(path), fcompile=_cross_compiler(cc))
    if target.kind.name == "nvptx":
        nvptx.mark_kernels(path)


def _check_linker(target, cc: str | None) -> None:
    """Refuse a target for another CPU architecture without a cross compiler to link its library."""
    from tvm.target import codegen

    host = target.host or (target if target.kind.name == "llvm" else None)
    arch = str(host.attrs.get("mtriple", "") or "").split("-")[0] if host is not None else ""
    if arch and not cc and arch != str(codegen.llvm_get_system_triple()).split("-")[0]:
        raise ValueError(
            f"the target builds code for {arch}, which this machine's compiler cannot link: "
            f"set the device's `cc` to a cross compiler (e.g. {arch}-linux-gnu-gcc)"
        )


def _cross_compiler(cc: str | None):
    """TVM's ``fcompile`` for ``export_library`` with the cross compiler ``cc`` (None: the host's)."""
    if not cc:
        return None
    from tvm.support import cc as tvm_cc

    return tvm_cc.cross_compiler(cc)


def _init_worker(cpus: list[int] | None, with_torch: bool) -> None:
    die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)
    if not with_torch:
        sys.modules["torch"] = None  # tvm_ffi imports torch eagerly; layer builds never use it (~3 s per worker)
    import tvm  # noqa: F401 - paid once per worker, not once per build


class BuildPool:
    """Long-lived build workers, pinned away from the CPUs that time kernels; ``with_torch``:
    workers that can compile whole models (:func:`build_lowered`, whose lowering code imports torch)."""

    def __init__(
        self, cache_dir: Path, avoid_cpus: list[int] | None = None, workers: int | None = None, with_torch: bool = False
    ):
        allowed = sorted(os.sched_getaffinity(0))
        self.cpus = [c for c in allowed if c not in set(avoid_cpus or [])] or allowed
        self.cache_dir = Path(cache_dir)
        self.workers = workers or len(self.cpus)
        self.with_torch = with_torch
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.cpus, self.with_torch),
        )

    def submit(self, job: BuildJob) -> Future:
        return self.call(build, job, self.cache_dir)

    def call(self, function, *args) -> Future:
        """``function(*args)`` in a worker (a pool that a dead worker broke is restarted first)."""
        try:
            return self._executor.submit(function, *args)
        except BrokenProcessPool:
            self.restart()
            return self._executor.submit(function, *args)

    def restart(self) -> None:
        """Replace the workers after one died (a crashed compiler breaks the whole pool) or hung
        (its process tree is killed)."""
        import psutil

        workers = list(getattr(self._executor, "_processes", {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            try:
                tree = psutil.Process(worker.pid).children(recursive=True) + [psutil.Process(worker.pid)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
        self._executor = self._start()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "BuildPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BuildQueue:
    """Yields the builds of ``jobs`` in order while keeping up to ``depth`` of them in flight.

    When a worker dies, the pool is restarted and the jobs in flight are submitted again; the job
    at the head of the queue is blamed, and fails after ``max_crashes`` deaths. A build still
    running ``timeout`` seconds after the queue started waiting for it (the default: its policy's,
    :func:`build_timeout`) fails with that error, and the pool is restarted without it.
    """

    def __init__(
        self,
        pool: BuildPool,
        jobs: list[BuildJob],
        depth: int | None = None,
        max_crashes: int = 2,
        timeout: float | None = None,
    ):
        self.pool = pool
        self.depth = depth or 2 * pool.workers + 1
        self.max_crashes = max_crashes
        self.timeout = timeout
        self.crashes: Counter[int] = Counter()  # by id(job): a job's target is a dict
        self.todo = deque(jobs)
        self.inflight: deque[tuple[BuildJob, Future]] = deque()
        self._refill()

    def _refill(self) -> None:
        while self.todo and len(self.inflight) < self.depth:
            job = self.todo.popleft()
            self.inflight.append((job, self.pool.submit(job)))

    def __iter__(self) -> Iterator[Built]:
        while self.inflight:
            job, future = self.inflight.popleft()
            limit = self.timeout or build_timeout(job.policy)
            try:
                built = future.result(timeout=limit)
            except BuildTimeout:
                self.pool.restart()
                self.inflight = deque((j, self.pool.submit(j)) for j, _ in self.inflight)
                built = Built(job, None, f"the build did not finish within {limit:g} s (a hung compiler?)", limit)
            except BrokenProcessPool:
                self.crashes[id(job)] += 1
                self.pool.restart()
                retry = [job] if self.crashes[id(job)] < self.max_crashes else []
                self.inflight = deque((j, self.pool.submit(j)) for j in retry + [j for j, _ in self.inflight])
                if retry:
                    continue
                built = Built(job, None, f"the build worker died {self.max_crashes} times building this config", 0.0)
            self._refill()
            yield built
