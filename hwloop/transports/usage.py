"""What a device's timing process shared its CPU with: read where the kernels run.

Standard library only: :mod:`agent` imports it beside itself, on a board as on this machine, and
:func:`register` makes ``hwloop.usage`` a TVM global function of its RPC server (the server's
sessions inherit it):
``hwloop.usage(cpus)`` returns, as text, the session process's own CPU time and the time it was
ready to run but waited for a CPU (``/proc/<pid>/task/*/schedstat``, in ns), and the steal and
total time of the CPUs ``cpus`` (a comma list) from ``/proc/stat`` (in ns). Between two readings,
the share of waiting is another process on the timing CPU; the share of steal, the hypervisor
running another guest there.
"""

from __future__ import annotations

import glob
import os

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
FIELDS = ("cpu_ns", "wait_ns", "steal_ns", "total_ns")


def usage(cpus: str) -> str:
    """``"cpu_ns wait_ns steal_ns total_ns"``; a field that cannot be read is -1."""
    cpu = wait = 0
    tasks = glob.glob(f"/proc/{os.getpid()}/task/*/schedstat")
    for path in tasks:
        try:
            with open(path) as f:
                values = f.read().split()
            cpu, wait = cpu + int(values[0]), wait + int(values[1])
        except (OSError, ValueError, IndexError):
            continue
    if not tasks:
        cpu = wait = -1
    wanted = {f"cpu{c.strip()}" for c in cpus.split(",") if c.strip()}
    steal = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if name in wanted or (not wanted and name == "cpu"):
                    jiffies = [int(v) for v in values]
                    steal += jiffies[7] if len(jiffies) > 7 else 0
                    total += sum(jiffies[:8])
    except (OSError, ValueError):
        steal = total = -1
    scale = 10**9 // USER_HZ
    return f"{cpu} {wait} {steal * scale if steal >= 0 else -1} {total * scale if total >= 0 else -1}"


def register() -> None:
    """Make :func:`usage` the RPC server's ``hwloop.usage``."""
    import tvm

    tvm.register_global_func("hwloop.usage", override=True)(usage)


def parse(text: str) -> dict[str, int]:
    return dict(zip(FIELDS, (int(v) for v in text.split())))
