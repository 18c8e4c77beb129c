"""Collection: build a space of layer configurations for a device, time them, keep every row.

Builds run ahead in a process pool while the device times the previous artifact; each result is
appended to the device's table as soon as it exists. A protocol with ``passes: N`` sweeps the
configs N times, one sweep after the other. A re-run skips what already has its successful rows
for the same schedule policy, target and protocol. A collection that adds to a table after a pause
starts each pass with a few of the table's configs again (anchors, :mod:`hwloop.pace`), so the
predictor can bring its rows to the table's pace.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from . import __version__, pace, tables
from .builder import BuildJob, BuildPool, BuildQueue, Built, tvm_version
from .layers import LayerConfig
from .registry import Device
from .runner import Measurement, Runner
from .schedules import Policy
from .targets import canonical, resolve
from .transports import open_transport


@dataclass(frozen=True)
class Context:
    """What every row of one device's collection shares."""

    device: Device
    policy: Policy
    target: dict
    protocol: str
    protocol_id: str

    @classmethod
    def of(cls, device: Device, policy: Policy) -> "Context":
        protocol = device.protocol.model_dump_json(exclude={"passes"})  # a row's meaning does not depend on it
        return cls(device, policy, resolve(device.target, device.protocol.threads), protocol,
                   hashlib.sha256(protocol.encode()).hexdigest()[:12])

    @property
    def target_json(self) -> str:
        return canonical(self.target)


@dataclass
class Summary:
    device: str
    schedule: str
    planned: int
    skipped: int
    anchors: int = 0  # measurements of configs already in the table, to pace a new spell
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def measured(self) -> int:
        return sum(row["status"] == "ok" for row in self.rows)

    @property
    def failed(self) -> int:
        return len(self.rows) - self.measured


def pending(configs: list[LayerConfig], context: Context, tables_dir: Path,
            force: bool) -> tuple[list[LayerConfig], int]:
    """The measurements still to take, pass by pass: a config appears once for each of the
    protocol's passes it has no successful row for in this context (every pass with ``force``).
    When the table's last row in this context is older than a spell, each pass starts with the
    table's anchors; returns the list and how many of it are anchors."""
    unique = list(dict.fromkeys(configs))
    table = tables.read(tables_dir, context.device.name)
    done = table[(table.status == "ok") & (table.schedule == context.policy.name)
                 & (table.target == context.target_json) & (table.protocol_id == context.protocol_id)]
    counts = {} if force else done.config_id.value_counts().to_dict()
    passes = [[c for c in unique if counts.get(c.id, 0) <= sweep] for sweep in range(context.device.protocol.passes)]
    links = []
    if any(passes) and not done.empty:
        idle = (pd.Timestamp.now(tz="UTC") - done.measured_at.max()).total_seconds()
        links = pace.anchors(done) if idle > pace.SPELL_GAP_S else []
    todo, anchored = [], 0
    for sweep in passes:
        if sweep:
            head = [a for a in links if a not in sweep]
            todo += head + sweep
            anchored += len(head)
    return todo, anchored


def planned_summary(device: Device, policy: Policy, configs: list[LayerConfig], todo: list[LayerConfig],
                    anchored: int) -> Summary:
    """The summary of a collection before it runs: it plans each distinct config of ``configs`` once
    per pass, skips what :func:`pending` left out and re-times ``anchored`` anchors besides."""
    total = len(set(configs)) * device.protocol.passes
    return Summary(device.name, policy.name, planned=total, skipped=max(total - len(todo) + anchored, 0),
                   anchors=anchored)


def collect(device: Device, configs: list[LayerConfig], policy: Policy, tables_dir: Path, cache_dir: Path,
            force: bool = False, on_start: Callable[[int], None] | None = None,
            on_row: Callable[[dict], None] | None = None) -> Summary:
    """Measure every config of ``configs`` not yet in ``device``'s table (once per pass of its
    protocol); rows are written as they come."""
    start = time.perf_counter()
    context = Context.of(device, policy)
    todo, anchored = pending(configs, context, tables_dir, force)
    summary = planned_summary(device, policy, configs, todo, anchored)
    if on_start:
        on_start(len(todo))
    if todo:
        avoid = device.protocol.cpus if device.transport == "local" else None
        with BuildPool(cache_dir, avoid_cpus=avoid) as pool:
            builds = BuildQueue(pool, [BuildJob(c, context.target, policy.name, device.cc) for c in todo])
            with open_transport(device) as transport:
                runner = Runner(transport, device.protocol, context.target)
                for built in builds:
                    config = built.job.config
                    measurement = (runner.measure(config, built.artifact) if built.artifact
                                   else Measurement("failed", "build", built.error))
                    row = make_row(context, config, built, measurement, transport.fingerprint())
                    tables.append(tables_dir, device.name, [row])
                    summary.rows.append(row)
                    if on_row:
                        on_row(row)
    summary.wall_s = time.perf_counter() - start
    return summary


def make_row(context: Context, config: LayerConfig, built: Built, m: Measurement, fp: dict) -> dict:
    """One table row: the config, the measurement and everything needed to know what it means."""
    return {
        "config_id": config.id,
        **config.to_dict(),
        "macs": config.macs,
        **measurement_fields(context, m, fp),
        "build_s": built.seconds,
        "build_cached": built.cached,
    }


def measurement_fields(context: Context, m: Measurement, fp: dict) -> dict:
    """The fields every measurement row has, of layers and of whole models alike."""
    return {
        "measurement_id": tables.new_measurement_id(),
        "device": context.device.name,
        "status": m.status,
        "stage": m.stage,
        "error": m.error,
        "latency_ms": m.median_ms,
        "latency_mean_ms": m.mean_ms,
        "latency_std_ms": m.std_ms,
        "latency_min_ms": m.min_ms,
        "latency_cv": m.cv,
        "latencies_ms": m.latencies_ms,
        "repeats": len(m.latencies_ms),
        "attempts": m.attempts,
        "check_error": m.check_error,
        "schedule": context.policy.name,
        "target": context.target_json,
        "cc": context.device.cc,
        "protocol": context.protocol,
        "protocol_id": context.protocol_id,
        "tvm_version": tvm_version(),
        "hwloop_version": __version__,
        "measure_s": m.seconds,
        "timing_s": m.timing_s,
        "measured_at": datetime.now(timezone.utc),
        **{f"fp_{key}": value for key, value in fp.items()},
    }
