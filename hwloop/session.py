"""A measuring session: the one way hwloop measures on a device, whatever asked for it (a layer
collection, an adaptive round, whole models, a validation, a board round, a fleet's worker).

A session holds one device's table for one schedule policy (a second run on that table waits for
it), opens the device's transport when there is something to measure, measures through a
:class:`~hwloop.runner.Runner`, measures again after a fault of the board or the link (the
transport reconnects, with bounded retries and backoff), gives the board up when it stays away,
and writes every row durably before the next measurement starts. A measurement that a lost board
cut short leaves no row: it is still to be measured, and a re-run measures it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths, tables
from .builder import BuildJob, Built, build
from .registry import Device
from .rows import Context, layer_row, model_row
from .runner import SENTINEL, Measurement, Runner
from .schedules import Policy
from .transports import DeviceBusy, TransportError, open_transport
from .transports.base import start_with_retries

FINGERPRINT_S = 10.0  # a device's fingerprint is read again after this long


@dataclass(frozen=True)
class ModelBuild:
    """A whole model built for a device: its name and key, input shape and layers (for its row), the
    library and torch's input and output to check it with, or the build's failure."""

    name: str
    model_id: str
    input_shape: tuple[int, ...]
    layers: list[dict]
    artifact: Path | None
    io: tuple[np.ndarray, np.ndarray] | None
    build_s: float
    failure: Measurement | None = None


def batched(items: Iterable, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Session:
    """Measurements of ``device`` under ``policy`` into its layer table (``models``: its model
    table). ``journal_only``: the caller already holds the table (a fleet runs several sessions
    of one table in its workers). ``cache_dir``: where torch's outputs that layers are checked
    against are kept (``references/``), shared by every session and pass, and where the protocol's
    sentinel is built (by default :func:`hwloop.paths.cache_dir`)."""

    def __init__(
        self,
        device: Device,
        policy: Policy,
        tables_dir: Path,
        models: bool = False,
        on_wait: Callable[[str], None] | None = None,
        journal_only: bool = False,
        cache_dir: Path | None = None,
    ):
        self.device = device
        self.references = Path(cache_dir) / "references" if cache_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
        self.context = Context.of(device, policy)
        self.tables_dir = Path(tables_dir)
        self.model_table = models
        self.writer = (
            tables.Journal(tables_dir, device.name, models)
            if journal_only
            else tables.Writer(tables_dir, device.name, models, on_wait)
        )
        self.transport = None
        self.runner: Runner | None = None
        self.lost: str | None = None
        self._fingerprint: dict = {}
        self._fingerprint_at = -FINGERPRINT_S

    def done(self, key: str) -> dict[str, int]:
        """How many successful rows of this context, timed on a quiet device, each ``key``
        (``config_id`` or ``model_id``) has."""
        rows = self._read([key, "quiet"], {"status": "ok", **self.context.same()})
        return rows[rows.quiet.ne(False)][key].value_counts().to_dict()

    def open(self) -> None:
        """Start the device's transport; a start that fails is tried again as a reconnect is, up to
        the device's ``link.retries`` times, so a fault while a session starts is survived like one
        in the middle of it. Raises :class:`TransportError` when the device stays away, and at once
        when another session holds it, its host key is not trusted or it cannot run hwloop."""
        if self.transport is None:
            from .transports.ssh import BoardError
            from .transports.sshlink import HostKeyError

            started = []
            failure = start_with_retries(
                lambda: started.append(open_transport(self.device)),
                self.device.link,
                f"cannot start a session on device {self.device.name!r}",
                fatal=(DeviceBusy, BoardError, HostKeyError),
            )
            if failure:
                raise TransportError(failure)
            self.transport = started[0]
            sentinel = self._sentinel()
            self.runner = Runner(
                self.transport,
                self.device.protocol,
                self.context.target,
                self.references,
                sentinel,
                self._fastest_sentinel() if sentinel else None,
            )

    def _sentinel(self) -> str | None:
        """The protocol's sentinel built for the device's target (default rules), or None where the
        protocol has none or it does not build (its layers will say why)."""
        if self.device.protocol.sentinel is None:
            return None
        job = BuildJob(SENTINEL, self.context.target, "default", self.device.cc)
        return build(job, self.cache_dir).artifact

    def _fastest_sentinel(self) -> float | None:
        """The fastest sentinel reading the rows of this context recorded, so that a session begun
        in a slow state of the device knows it."""
        recorded = self._read(["sentinel_ms"], self.context.same()).sentinel_ms.dropna()
        return float(recorded.min()) if len(recorded) else None

    def _read(self, columns: list[str], where: dict):
        """``columns`` of the rows of this session's table that match ``where``."""
        read = tables.read_models if self.model_table else tables.read
        return read(self.tables_dir, self.device.name, columns=columns, where=where)

    def layers(self, builds: list[Built]) -> list[dict] | None:
        """Measure a batch of builds (a failed build is its row) and write their rows, in order;
        None when the board was lost meanwhile (no row for the batch)."""
        ready = [(b.job.config, b.artifact) for b in builds if b.artifact]
        measured = self._measured(Runner.measure_layers, ready) if ready else []
        if measured is None:
            return None
        results = iter(measured)
        fp = self.fingerprint()
        return [
            self._write(
                layer_row(
                    self.context,
                    b.job.config,
                    b,
                    next(results) if b.artifact else Measurement("failed", "build", b.error),
                    fp,
                )
            )
            for b in builds
        ]

    def models(self, models: list[ModelBuild]) -> list[dict] | None:
        """Measure a batch of built whole models (a failed build is its row) and write their rows,
        in order; None when the board was lost meanwhile."""
        ready = [(str(m.artifact), *m.io) for m in models if m.failure is None]
        measured = self._measured(Runner.measure_models, ready) if ready else []
        if measured is None:
            return None
        results = iter(measured)
        fp = self.fingerprint()
        return [
            self._write(
                model_row(
                    self.context, m.name, m.model_id, m.input_shape, m.layers, m.failure or next(results), m.build_s, fp
                )
            )
            for m in models
        ]

    def fingerprint(self) -> dict:
        """The device's fingerprint, read again when the last reading is older than :data:`FINGERPRINT_S`."""
        if self.transport is not None and time.monotonic() - self._fingerprint_at >= FINGERPRINT_S:
            self._fingerprint = self.transport.fingerprint()
            self._fingerprint_at = time.monotonic()
        return self._fingerprint

    def _measured(self, measure, items: list) -> list[Measurement] | None:
        """``measure(runner, items)``, taken again after each fault of the board or the link, up to
        the device's ``link.retries``; None (and :attr:`lost` set) when the board cannot be reached
        again. A batch that still fails is measured item by item, so that only the item at fault
        fails: a layer that faults the board every time fails alone."""
        if self.lost:
            return None
        self.open()
        for _ in range(self.device.link.retries + 1):
            results = measure(self.runner, items)
            if all(m.status != "failed" for m in results):
                return results
            fault = self.transport.fault()
            if fault is None:
                break
            for m in results:
                if m.status == "failed":
                    m.error = f"{fault} ({m.error})"
            try:
                self.transport.reconnect()
            except TransportError as exc:
                self.lost = str(exc)
                return None
        if len(items) == 1:
            return results
        one_by_one = []
        for item in items:
            result = self._measured(measure, [item])
            if result is None:
                return None
            one_by_one += result
        return one_by_one

    def _write(self, row: dict) -> dict:
        self.writer.write(row)
        return row

    def close(self) -> None:
        try:
            if self.transport is not None:
                self.transport.close()
        finally:
            self.writer.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            self.close()
        except tables.TableError:
            if kind is None:
                raise
