"""The ``tuned:N`` policy: MetaSchedule search with N measured candidates, its records kept and reused.

Each (target, workload) pair has its own JSON database under ``work_dir/<target>/<workload>/``, keyed
by short hashes of the target's configuration and the module's structural hash, with MetaSchedule's
logs in ``logs/`` beside it. A workload whose database already holds a valid record is not tuned
again: its best record is replayed. A file lock serialises processes that share a database.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

NUMBER = 3
REPEAT = 1
MIN_REPEAT_MS = 40
TRIALS_PER_ROUND = 64
COST_MODEL_WARMUP = 100
BUILD_WORKERS = 2
BUILD_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 30.0

_LOGGER = "tvm.s_tir.meta_schedule"
_INTRIN_PACKAGE = "tvm.s_tir.tensor_intrin"
_ALL_INTRINSICS = ("cuda", "x86", "arm_cpu", "riscv_cpu", "rocm", "hexagon")


def tune(mod: tvm.IRModule, target: tvm.target.Target, trials: int, work_dir: Path) -> tvm.IRModule:
    """``mod`` scheduled for ``target`` by MetaSchedule with a budget of ``trials`` measured candidates.

    Reuses the best record already in ``work_dir`` for this workload and target without tuning.
    Raises ``RuntimeError`` when no candidate builds and runs.
    """
    if trials < 1:
        raise ValueError(f"trials must be positive, got {trials}")
    from tvm.s_tir import meta_schedule as ms

    _register_intrinsics(target)
    directory = database_dir(mod, target, work_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / "lock"):
        database = ms.database.JSONDatabase(work_dir=str(directory))
        scheduled = database.query_ir_module(mod, target, "main")
        if scheduled is None:
            with _logs_in(directory / "logs"):
                _search(mod, target, trials, database, directory)
            scheduled = database.query_ir_module(mod, target, "main")
    if scheduled is None:
        raise RuntimeError(
            f"MetaSchedule found no valid schedule in {trials} trials (every candidate failed to build "
            f"or run); see {directory / 'logs'}"
        )
    return scheduled


def tune_functions(mod: tvm.IRModule, target: tvm.target.Target, trials: int, work_dir: Path) -> tvm.IRModule:
    """Every PrimFunc of ``mod`` that reduces (convolutions, dense, pooling) tuned on its own, as
    :func:`tune` tunes a layer; element-wise PrimFuncs are left as they are."""
    import tvm
    from tvm import tirx

    out = mod.clone()
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and _reduces(func):
            single = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
            tuned = tune(single, target, trials, work_dir)["main"]
            symbol = func.attrs.get("global_symbol") if func.attrs else None
            out[gvar] = tuned.with_attr("global_symbol", symbol) if symbol else tuned.without_attr("global_symbol")
    return out


def _reduces(func) -> bool:
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    return any(
        iv.iter_type == tirx.IterVar.CommReduce
        for block in sch.get_child_blocks(sch.get_sblock("root"))
        for iv in sch.get(block).iter_vars
    )


def database_dir(mod: tvm.IRModule, target: tvm.target.Target, work_dir: Path) -> Path:
    """Where the records of ``mod`` tuned for ``target`` are kept."""
    import tvm_ffi

    config = json.dumps(json.loads(str(target)), sort_keys=True)
    target_key = hashlib.sha256(config.encode()).hexdigest()[:16]
    return Path(work_dir) / target_key / f"{tvm_ffi.structural_hash(mod) & (2**64 - 1):016x}"


def _search(mod, target, trials: int, database, directory: Path) -> None:
    import cloudpickle
    from tvm.s_tir import meta_schedule as ms

    threads = _num_cores(target)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    context = ms.TuneContext(
        mod,
        target=target,
        space_generator="post-order-apply",
        search_strategy=_strategy(trials),
        task_name="main",
        num_threads=BUILD_WORKERS,
        logger=logging.getLogger(f"{_LOGGER}.hwloop"),
    )
    builder = ms.builder.LocalBuilder(max_workers=BUILD_WORKERS, timeout_sec=BUILD_TIMEOUT_S, f_build=_build)
    runner = ms.runner.LocalRunner(
        timeout_sec=RUN_TIMEOUT_S,
        evaluator_config=ms.runner.EvaluatorConfig(
            number=NUMBER, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS, enable_cpu_cache_flush=False
        ),
        initializer=functools.partial(_limit_threads, threads),
    )
    try:
        ms.tune.tune_tasks(
            tasks=[context],
            task_weights=[1.0],
            work_dir=str(directory),
            max_trials_global=trials,
            num_trials_per_iter=min(trials, TRIALS_PER_ROUND),
            builder=builder,
            runner=runner,
            database=database,
            cost_model=ms.cost_model.XGBModel(num_warmup_samples=COST_MODEL_WARMUP, num_tuning_cores=BUILD_WORKERS),
            measure_callbacks="default",
            task_scheduler="round-robin",
        )
    finally:
        runner.pool.shutdown()


def _strategy(trials: int) -> str:
    """Random replay while the XGBoost cost model is still warming up, evolutionary search after.

    Until it has ``COST_MODEL_WARMUP`` measurements the cost model scores candidates at random, so
    the evolutionary search would spend about half a minute per round choosing random candidates.
    """
    return "replay-trace" if trials <= COST_MODEL_WARMUP else "evolutionary"


def _build(mod, target, _params):
    """MetaSchedule's default build without its import of every tensor intrinsic (a minute per worker)."""
    from tvm import tirx
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _limit_threads(threads: int) -> None:
    """Run candidates with as many threads as the target has cores (set before TVM's pool starts)."""
    import os

    os.environ["TVM_NUM_THREADS"] = str(threads)


def _num_cores(target) -> int:
    cores = target.attrs.get("num-cores")
    if cores is None:
        raise ValueError(f"MetaSchedule needs num-cores in the target: {target}")
    return int(cores)


def _register_intrinsics(target) -> None:
    """Register the tensor intrinsics MetaSchedule may use for ``target``.

    ``tvm.s_tir.tensor_intrin`` registers every backend's intrinsics on import, 1-2 minutes (mostly
    CUDA), and ``TuneContext`` imports it. An empty package stands in for it, and only the modules
    the target needs are imported: for a CPU, its architecture's (under a second for x86).
    """
    if _INTRIN_PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(_INTRIN_PACKAGE)
        package = types.ModuleType(_INTRIN_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[_INTRIN_PACKAGE] = package
    modules = [_architecture(target)] if target.kind.name == "llvm" else _ALL_INTRINSICS
    for module in modules:
        importlib.import_module(f"{_INTRIN_PACKAGE}.{module}")


def _architecture(target) -> str:
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple") or codegen.llvm_get_system_triple())
    if triple.startswith(("aarch64", "arm")):
        return "arm_cpu"
    if triple.startswith("riscv"):
        return "riscv_cpu"
    return "x86"


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _logs_in(directory: Path):
    """Send MetaSchedule's logging to ``directory/tune.log`` only, for the duration of a search."""
    directory.mkdir(exist_ok=True)
    handler = logging.FileHandler(directory / "tune.log")
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
    logger = logging.getLogger(_LOGGER)
    saved = logger.handlers, logger.level, logger.propagate
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])
        handler.close()
