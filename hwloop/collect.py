"""Collection: build a space of layer configurations for a device, time them, keep every row.

Builds run ahead in a process pool while the device times the previous batch (in a measuring
session, :mod:`hwloop.session`); each result is written to the device's table as soon as it exists.
A protocol with ``passes: N`` sweeps the configs N times, one sweep after the other. A re-run skips
what already has its successful, quiet rows for the same schedule policy, target and protocol; what
the device was too busy to time quietly, what its trials disagreed on (:mod:`hwloop.trust`; the
protocol's ``retake_scattered``) and what the protocol's sentinel found slow against the
collection's fastest reading is taken again at the end of a collection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables
from .builder import BuildJob, BuildPool, BuildQueue
from .layers import LayerConfig
from .registry import Device, Protocol
from .rows import Context
from .schedules import Policy
from .session import Session, batched
from .trust import disagree


@dataclass
class Summary:
    device: str
    schedule: str
    planned: int
    skipped: int
    retaken: int = 0  # measurements taken again at the end: the device was busy, or their trials disagreed
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None  # why the device was given up, if it was

    @property
    def measured(self) -> int:
        return sum(row["status"] == "ok" for row in self.rows)

    @property
    def failed(self) -> int:
        return len(self.rows) - self.measured

    def put(self, row: dict, replacing: dict[str, int]) -> None:
        """Add ``row``, or put it in place of the row it retakes (``replacing``: config id → that
        row's index in :attr:`rows`; the entry is used up)."""
        index = replacing.pop(row["config_id"], None)
        if index is None:
            self.rows.append(row)
        else:
            self.rows[index] = row


def pending(configs: list[LayerConfig], context: Context, tables_dir: Path, force: bool) -> list[LayerConfig]:
    """The measurements still to take, pass by pass: a config appears once for each of the
    protocol's passes it has no successful, quiet row for in this context (every pass with ``force``)."""
    unique = list(dict.fromkeys(configs))
    done = tables.read(
        tables_dir, context.device.name, columns=["config_id", "quiet"], where={"status": "ok", **context.same()}
    )
    counts = {} if force else done[done.quiet.ne(False)].config_id.value_counts().to_dict()
    return [c for sweep in range(context.device.protocol.passes) for c in unique if counts.get(c.id, 0) <= sweep]


def planned_summary(device: Device, policy: Policy, configs: list[LayerConfig], todo: list[LayerConfig]) -> Summary:
    """The summary of a collection before it runs: it plans each distinct config of ``configs`` once
    per pass and skips what :func:`pending` left out."""
    total = len(set(configs)) * device.protocol.passes
    return Summary(device.name, policy.name, planned=total, skipped=total - len(todo))


def collect(
    device: Device,
    configs: list[LayerConfig],
    policy: Policy,
    tables_dir: Path,
    cache_dir: Path,
    force: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_row: Callable[[dict], None] | None = None,
    session: Session | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Summary:
    """Measure every config of ``configs`` not yet in ``device``'s table (once per pass of its
    protocol); rows are written as they come. ``session`` is an open session of this device and
    policy to measure in (else one is opened for this collection; ``on_wait`` hears when another
    run holds the table). A device given up midway ends the collection: ``Summary.error`` says why."""
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(Session(device, policy, tables_dir, on_wait=on_wait, cache_dir=cache_dir))
        todo = pending(configs, session.context, tables_dir, force)
        summary = planned_summary(device, policy, configs, todo)
        if on_start:
            on_start(len(todo))
        if todo:
            session.open()
            avoid = device.protocol.cpus if device.transport == "local" else None
            with BuildPool(cache_dir, avoid_cpus=avoid) as pool:
                _sweep(session, pool, todo, summary, on_row)
                again, unsettled = retakes(summary, todo, device.protocol)
                if again and not session.lost:
                    summary.retaken = len(again)
                    if on_start:
                        on_start(len(todo) + len(again))
                    _sweep(session, pool, again, summary, on_row, unsettled)
        summary.error = session.lost
    summary.wall_s = time.perf_counter() - start
    return summary


def unsettled_rows(rows: list[dict], scattered: bool = True, sentinel: float | None = None) -> list[int]:
    """The indices of ``rows`` to take once more at the end of a collection: rows timed while the
    device was busy; with ``scattered``, successful rows whose trials disagree
    (:func:`hwloop.trust.disagree`); with ``sentinel`` (the protocol's factor), rows whose
    sentinel ran more than that slower than the fastest of them (a session begun in a slow state
    of the device took them for quiet)."""
    if not rows:
        return []
    frame = pd.DataFrame(rows, columns=["status", "latency_ms", "trial_latencies_ms", "quiet", "sentinel_ms"])
    slow = frame.sentinel_ms.gt(sentinel * frame.sentinel_ms.min()).to_numpy() if sentinel else False
    return list(np.flatnonzero(frame.quiet.eq(False).to_numpy() | (disagree(frame) & scattered) | slow))


def retakes(summary: Summary, todo: list[LayerConfig], protocol: Protocol) -> tuple[list[LayerConfig], dict[str, int]]:
    """The configs of ``todo`` to take once more at the end of a collection under ``protocol`` (the
    configs of :func:`unsettled_rows` of ``summary.rows``) and, for each, its row's index in
    ``summary.rows`` (the row its retake replaces)."""
    rows = unsettled_rows(summary.rows, protocol.retake_scattered, protocol.sentinel)
    unsettled = {summary.rows[i]["config_id"]: i for i in rows}
    return [c for c in dict.fromkeys(todo) if c.id in unsettled], unsettled


def _sweep(
    session: Session,
    pool: BuildPool,
    configs: list[LayerConfig],
    summary: Summary,
    on_row: Callable[[dict], None] | None,
    replacing: dict[str, int] | None = None,
) -> None:
    """Build ``configs`` in ``pool`` and measure them in ``session`` batch by batch, rows into
    ``summary``; a config of ``replacing`` (config id → its row's index in ``summary.rows``) is
    taken again, and its new row replaces the old one there (the table keeps both)."""
    replacing = dict(replacing or {})
    size = session.device.protocol.batch
    jobs = [BuildJob(c, session.context.target, session.context.policy.name, session.device.cc) for c in configs]
    for batch in batched(BuildQueue(pool, jobs, depth=2 * size + pool.workers), size):
        rows = session.layers(batch)
        if rows is None:
            return
        for row in rows:
            summary.put(row, replacing)
            if on_row:
                on_row(row)
