"""TVM targets as JSON-style mappings, with ``mcpu: host`` resolved to this machine's CPU."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
from functools import lru_cache
from pathlib import Path

from .paths import cache_dir

# /proc/cpuinfo fields that differ between the CPUs of one machine or from one reading to the next
VOLATILE_CPUINFO = ("processor", "cpu mhz", "bogomips", "core id", "apicid", "initial apicid", "siblings")


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``"native"`` is refused by TVM's LLVM).

    Kept under the cache (``host-cpu.json``) for this CPU and this TVM build, so that what only
    plans (``collect --dry-run``, a run's planning) does not import TVM."""
    key, path = _host_key(), cache_dir() / "host-cpu.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key is not None and isinstance(known, dict) and isinstance(known.get(key), str):
        return known[key]
    from tvm.target import codegen

    cpu = str(codegen.llvm_get_system_cpu())
    if key is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written costs the next run TVM's start
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: cpu}))
            os.replace(partial, path)
    return cpu


def _host_key() -> str | None:
    """This CPU (its first ``/proc/cpuinfo`` entry, what varies left out) and the TVM build that names
    it (its compiler library: where it is, its size and time); None where either is unknown."""
    spec = importlib.util.find_spec("tvm")
    try:
        libraries = sorted(Path(spec.origin).parent.glob("lib*/libtvm*.so")) if spec and spec.origin else []
        build = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in libraries]
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    except OSError:
        return None
    cpu = [line for line in first if line.split(":")[0].strip().lower() not in VOLATILE_CPUINFO]
    if not build or not cpu:
        return None
    return hashlib.sha256("\n".join([platform.machine(), *build, *cpu]).encode()).hexdigest()[:16]


def resolve(target: dict, threads: int) -> dict:
    """A concrete target: ``mcpu: host`` replaced by the host CPU, ``num-cores`` set for CPU kinds."""
    resolved = dict(target)
    if resolved.get("mcpu") == "host":
        resolved["mcpu"] = host_cpu()
    if resolved.get("kind") == "llvm":
        resolved.setdefault("num-cores", threads)
    return resolved


def runtime_device_type(target: dict) -> int:
    """The DLPack device type kernels built for ``target`` run on (CPU for ``llvm``, CUDA for ``nvptx``...)."""
    from tvm.target import Target

    return int(Target(target).get_target_device_type())


def canonical(target: dict) -> str:
    """The target as one stable JSON string, the form stored in tables and cache keys."""
    return json.dumps(target, sort_keys=True, separators=(",", ":"))
