"""TVM targets as JSON-style mappings, with ``mcpu: host`` resolved to this machine's CPU."""

from __future__ import annotations

import json
from functools import lru_cache


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``"native"`` is refused by TVM's LLVM)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


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
