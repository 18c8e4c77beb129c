"""What a benchmark's results record about where and how they were made: the machine (CPU model,
LLVM's name for the CPU, cores), the commit and the command. Imported by the benchmarks as
``bench.machine`` (run them from the repository root: ``python -m bench.NAME``)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from hwloop.fingerprint import collect
from hwloop.targets import host_cpu

ROOT = Path(__file__).resolve().parent.parent


def provenance() -> dict:
    """The machine, the commit (with ``+dirty`` for uncommitted changes) and the command line."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    return {
        "machine": {"cpu_model": collect()["cpu_model"], "llvm_cpu": host_cpu(), "cores": os.cpu_count()},
        "commit": commit,
        "command": " ".join(["python", "-m", f"bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
    }


def script_record() -> dict:
    """A benchmark run as a script (``python bench/NAME.py``): the machine (CPU model, LLVM's name
    for the CPU, cores), the short commit, the command line and the date, in one flat record."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu_model": collect()["cpu_model"],
        "llvm_cpu": host_cpu(),
        "cores": os.cpu_count(),
        "commit": commit,
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
    }


def local_registry(folder: Path, passes: int = 1, threads: int = 1) -> Path:
    """A registry in ``folder`` whose ``local`` device times on CPU 0 with the benchmarks' protocol."""
    protocol = {
        "warmup": 5,
        "number": 10,
        "repeat": 10,
        "min_repeat_ms": 20,
        "threads": threads,
        "cpus": list(range(threads)),
        "passes": passes,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "devices.yaml").write_text(
        yaml.safe_dump(
            {
                "devices": {
                    "local": {"transport": "local", "target": {"kind": "llvm", "mcpu": "host"}, "protocol": protocol}
                }
            }
        )
    )
    return folder


@contextmanager
def cpu_lock(lock: Path | None, exclusive: bool) -> Iterator[None]:
    """Hold an advisory lock on ``lock`` (nothing when None) for a phase of a benchmark: exclusive while it
    times, shared while it trains or builds, so that other jobs on a shared host that take the same lock
    shared wait for the timing, and run beside the rest. An exclusive waiter first holds ``LOCK.gate``,
    which shared takers pass through first, so a stream of shared jobs cannot starve it."""
    if lock is None:
        yield
        return
    gate = lock.with_suffix(".gate")
    with open(gate, "a") as gate_file, open(lock, "a") as lock_file:
        fcntl.flock(gate_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(gate_file, fcntl.LOCK_UN)
        fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(gate_file, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
