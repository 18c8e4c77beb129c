"""The ``transfer:N`` policy: MetaSchedule traces tuned for anchor channel counts, replayed in between.

A layer's anchors are the same layer with its channel counts moved to the nearest points of a
geometric grid (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, …) below and above; the two nearest
anchors are tuned once with ``tuned:N`` (their records are that policy's records). The best
``TOP_K`` traces of each anchor are replayed on the layer: tile decisions that still divide the
new loop extents are kept, the others are refitted (the largest divisors, innermost first) or
re-sampled. Together with the rule-based ``default`` schedule they are the candidates; when this
machine can run the target, each is timed here and the fastest is kept, otherwise the refitted
best trace of the nearest anchor is used.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..layers import LayerConfig

if TYPE_CHECKING:
    import tvm

TOP_K = 2
ANCHORS = 2
NUMBER = 3
REPEAT = 3
MIN_REPEAT_MS = 10


def grid_bracket(count: int, multiple: int = 1) -> list[int]:
    """The grid points nearest ``count`` below and above (one point when it is on the grid).

    The grid holds 2**k and 3 * 2**k, each rounded up to a multiple of ``multiple``.
    """
    points = sorted({-(-p // multiple) * multiple for k in range(16) for p in (2**k, 3 * 2**k)})
    below = max((p for p in points if p <= count), default=None)
    above = min(p for p in points if p >= count)
    return sorted({p for p in (below, above) if p is not None})


def anchors(config: LayerConfig) -> list[LayerConfig]:
    """The configs whose tuned traces are replayed on ``config``, nearest first."""
    if config.op == "depthwise_conv2d":
        multiplier = config.out_channels // config.in_channels
        candidates = [
            dataclasses.replace(config, in_channels=c, out_channels=c * multiplier, groups=c)
            for c in grid_bracket(config.in_channels)
        ]
    else:
        candidates = [
            dataclasses.replace(config, in_channels=i, out_channels=o)
            for i in grid_bracket(config.in_channels, config.groups)
            for o in grid_bracket(config.out_channels, config.groups)
        ]

    def distance(anchor: LayerConfig) -> float:
        return abs(math.log(anchor.in_channels / config.in_channels)) + abs(
            math.log(anchor.out_channels / config.out_channels)
        )

    return sorted(candidates, key=distance)[:ANCHORS]


def transfer(
    config: LayerConfig, mod: tvm.IRModule, target: tvm.target.Target, trials: int, work_dir: Path
) -> tvm.IRModule:
    """``mod`` (the layer ``config``) scheduled by the fastest of its anchors' replayed traces and ``default``."""
    from tvm.s_tir import meta_schedule as ms

    from ..kernels import prim_module
    from .default import schedule as default_schedule
    from .tuned import database_dir, tune

    traces = []
    for anchor in anchors(config):
        anchor_mod = prim_module(anchor)
        tune(anchor_mod, target, trials, work_dir)
        database = ms.database.JSONDatabase(work_dir=str(database_dir(anchor_mod, target, work_dir)))
        traces += [record.trace for record in database.get_top_k(database.commit_workload(anchor_mod), TOP_K)]
    postprocs = _postprocs(mod, target)
    replayed = [
        m
        for trace in traces
        for resample in (False, True)
        if (m := replay(mod, trace, postprocs, resample)) is not None
    ]
    if not _runs_here(target):
        if not replayed:
            raise RuntimeError(f"no tuned trace of the anchors {[a.id for a in anchors(config)]} fits {config.id}")
        return replayed[0]
    bench = _Bench(config, target)
    return min([default_schedule(mod, target), *replayed], key=bench.latency)


def replay(mod: tvm.IRModule, trace, postprocs, resample: bool) -> tvm.IRModule | None:
    """``trace`` applied to ``mod`` with its tile decisions fitted to ``mod``'s extents, or None."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)

    def fit(instruction, inputs, _attrs, decision):
        if instruction.kind.name != "SamplePerfectTile":
            return decision
        extent = int(sch.get(inputs[0]).extent)
        factors = [int(f) for f in decision]
        if math.prod(factors) == extent:
            return decision
        return None if resample else refit(factors, extent)

    try:
        trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=fit)
    except Exception:  # noqa: BLE001 - a trace that does not apply to this shape is no candidate
        return None
    return sch.mod if all(p.apply(sch) for p in postprocs) else None


def refit(factors: list[int], extent: int) -> list[int]:
    """Tile factors (outermost first) whose product is ``extent``, keeping the inner ones where they divide."""
    inner, rest = [], extent
    for factor in reversed(factors[1:]):
        kept = math.gcd(factor, rest)
        inner.append(kept)
        rest //= kept
    return [rest, *reversed(inner)]


def _postprocs(mod, target):
    from tvm.s_tir import meta_schedule as ms

    postprocs = ms.postproc.Postproc.create("llvm")
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply", task_name="main")
    for postproc in postprocs:
        postproc._initialize_with_tune_context(context)
    return postprocs


def _runs_here(target) -> bool:
    """Whether code for ``target`` runs on this machine (same triple and CPU)."""
    from tvm.target import codegen

    from ..targets import host_cpu

    triple = target.attrs.get("mtriple")
    return (
        target.kind.name == "llvm"
        and str(target.attrs.get("mcpu", "")) == host_cpu()
        and (triple is None or str(triple) == str(codegen.llvm_get_system_triple()))
    )


class _Bench:
    """Times the candidates of one layer on this machine; the first one timed gives the expected output."""

    def __init__(self, config: LayerConfig, target):
        import tvm

        from ..kernels import random_inputs

        self.config, self.target, self.device = config, target, tvm.cpu()
        data, weight = random_inputs(config)
        self.inputs = [tvm.runtime.tensor(data, self.device), tvm.runtime.tensor(weight, self.device)]
        self.expected = None
        self.seconds: dict[int, float] = {}

    def latency(self, mod) -> float:
        """Median seconds of ``mod``, or infinity when it fails or its output differs from the first timed."""
        import tvm

        from ..kernels import relative_error, tolerance

        if id(mod) in self.seconds:
            return self.seconds[id(mod)]
        try:
            executable = tvm.compile(mod, self.target)
            output = tvm.runtime.empty(self.config.output_shape, self.config.dtype, self.device)
            executable["main"](*self.inputs, output)
            result = output.numpy()
            if self.expected is None:
                self.expected = result
            elif not relative_error(result, self.expected) <= tolerance(self.config):
                return self._keep(mod, math.inf)
            timer = executable.mod.time_evaluator(
                "main", self.device, number=NUMBER, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS
            )
            return self._keep(mod, timer(*self.inputs, output).median)
        except Exception:  # noqa: BLE001 - a candidate that does not build or run loses
            return self._keep(mod, math.inf)

    def _keep(self, mod, seconds: float) -> float:
        self.seconds[id(mod)] = seconds
        return seconds
