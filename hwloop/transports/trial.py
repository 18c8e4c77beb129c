"""One trial run where the kernels run, in one RPC call: ``hwloop.trial``, a TVM global function of
the device's RPC server (registered by :mod:`agent`, like ``hwloop.usage``; the server's sessions
inherit it).

``hwloop.trial(name, device_type, device_id, warmup, number, repeat, min_repeat_ms, cooldown_ms,
flush, cpus, outputs, *tensors)`` copies the library ``name`` (uploaded once into the server's folder) to
a new file and loads that copy (the device maps it anew), gives each of ``tensors`` a fresh buffer
on the device (a copy of it; the last ``outputs`` of them left empty), runs ``main`` ``warmup``
times untimed, then times it with TVM's ``time_evaluator`` between two readings of
``hwloop.usage(cpus)``. It returns, as text, ``"BEFORE|AFTER|S1 S2 ..."``: the two readings and
each repeat's seconds. The host then spends one round trip and no upload per trial.

Standard library only until called: it is shipped beside :mod:`agent` to boards without hwloop.
"""

from __future__ import annotations

import os
import secrets
import shutil


def trial(
    name, device_type, device_id, warmup, number, repeat, min_repeat_ms, cooldown_ms, flush, cpus, outputs, *tensors
):
    import tvm

    source = tvm.get_global_func("tvm.rpc.server.workpath")(name)
    stem, suffix = os.path.splitext(source)
    copy = f"{stem}-{secrets.token_hex(4)}{suffix}"
    shutil.copyfile(source, copy)
    try:
        module = tvm.runtime.load_module(copy)
    finally:
        os.remove(copy)
    device = tvm.device(device_type, device_id)
    split = len(tensors) - outputs
    args = [t.copyto(device) for t in tensors[:split]]
    args += [tvm.runtime.empty(t.shape, t.dtype, device) for t in tensors[split:]]
    usage = tvm.get_global_func("hwloop.usage")
    timing = (warmup, number, repeat, min_repeat_ms, cooldown_ms, flush)
    before, after, results = time_main(module, device, args, *timing, lambda: usage(cpus))
    return f"{before}|{after}|{' '.join(map(repr, results))}"


def time_main(module, device, args, warmup, number, repeat, min_repeat_ms, cooldown_ms, flush, usage):
    """``module``'s ``main`` (a library, or a Relax VM) run ``warmup`` times untimed, then timed by
    TVM's ``time_evaluator`` between two ``usage()`` readings: (before, after, each repeat's seconds).
    With ``flush``, every argument but the first is flushed from the CPU caches before each repeat.
    """
    if warmup:
        module.time_evaluator("main", device, number=warmup, repeat=1)(*args)
    evaluator = module.time_evaluator(
        "main",
        device,
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        cooldown_interval_ms=cooldown_ms,
        f_preproc="cache_flush_cpu_non_first_arg" if flush else "",
    )
    before = usage()
    results = evaluator(*args).results
    after = usage()
    return before, after, [float(s) for s in results]


def register() -> None:
    """Make :func:`trial` the RPC server's ``hwloop.trial``."""
    import tvm

    tvm.register_global_func("hwloop.trial", override=True)(trial)


def parse(text: str) -> tuple[str, str, list[float]]:
    """The two usage readings and the repeats' seconds of a :func:`trial`'s answer."""
    before, after, seconds = text.split("|")
    return before, after, [float(s) for s in seconds.split()]
