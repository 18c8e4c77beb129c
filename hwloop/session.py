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
from pathlib import Path
from typing import Callable

import numpy as np

from . import tables
from .builder import Built
from .layers import LayerConfig
from .registry import Device
from .rows import Context, layer_row, model_row
from .runner import Measurement, Runner
from .schedules import Policy
from .transports import TransportError, open_transport

FINGERPRINT_S = 10.0  # a device's fingerprint is read again after this long


class Session:
    """Measurements of ``device`` under ``policy`` into its layer table (``models``: its model
    table). ``journal_only``: the caller already holds the table (a fleet runs several sessions
    of one table in its workers)."""

    def __init__(self, device: Device, policy: Policy, tables_dir: Path, models: bool = False,
                 on_wait: Callable[[str], None] | None = None, journal_only: bool = False):
        self.device = device
        self.context = Context.of(device, policy)
        self.tables_dir = Path(tables_dir)
        self.models = models
        self.writer = (tables.Journal(tables_dir, device.name, models) if journal_only
                       else tables.Writer(tables_dir, device.name, models, on_wait))
        self.transport = None
        self.runner: Runner | None = None
        self.lost: str | None = None
        self._fingerprint: dict = {}
        self._fingerprint_at = -FINGERPRINT_S

    def done(self, key: str) -> dict[str, int]:
        """How many successful rows of this context each ``key`` (``config_id`` or ``model_id``) has."""
        read = tables.read_models if self.models else tables.read
        rows = read(self.tables_dir, self.device.name, columns=[key], where={"status": "ok", **self.context.same()})
        return rows[key].value_counts().to_dict()

    def open(self) -> None:
        """Start the device's transport (it raises :class:`TransportError` when the device cannot be reached)."""
        if self.transport is None:
            self.transport = open_transport(self.device)
            self.runner = Runner(self.transport, self.device.protocol, self.context.target)

    def layer(self, config: LayerConfig, built: Built) -> dict | None:
        """Measure the built ``config`` and write its row; None when the board was lost meanwhile."""
        if built.artifact is None:
            m = Measurement("failed", "build", built.error)
        else:
            m = self._measured(lambda runner: runner.measure(config, built.artifact))
            if m is None:
                return None
        return self._write(layer_row(self.context, config, built, m, self.fingerprint()))

    def model(self, name: str, model_id: str, input_shape: tuple[int, ...], layers: list[dict], artifact: Path | None,
              io: tuple[np.ndarray, np.ndarray] | None, build_s: float, failure: Measurement | None = None) -> dict | None:
        """Measure a whole model's ``artifact`` against torch's ``io`` (input, output), or record its
        build ``failure``, and write its row; None when the board was lost meanwhile."""
        m = failure or self._measured(lambda runner: runner.measure_model(str(artifact), *io))
        if m is None:
            return None
        return self._write(model_row(self.context, name, model_id, input_shape, layers, m, build_s, self.fingerprint()))

    def fingerprint(self) -> dict:
        """The device's fingerprint, read again when the last reading is older than :data:`FINGERPRINT_S`."""
        if self.transport is not None and time.monotonic() - self._fingerprint_at >= FINGERPRINT_S:
            self._fingerprint = self.transport.fingerprint()
            self._fingerprint_at = time.monotonic()
        return self._fingerprint

    def _measured(self, work: Callable[[Runner], Measurement]) -> Measurement | None:
        """``work``'s measurement, taken again after each fault of the board or the link, up to the
        device's ``link.retries``; None (and :attr:`lost` set) when the board cannot be reached again.
        A measurement that faults the board every time is returned failed: it is that layer's."""
        if self.lost:
            return None
        self.open()
        for _ in range(self.device.link.retries + 1):
            m = work(self.runner)
            fault = self.transport.fault() if m.status == "failed" else None
            if fault is None:
                return m
            m.error = f"{fault} ({m.error})"
            try:
                self.transport.reconnect()
            except TransportError as exc:
                self.lost = str(exc)
                return None
        return m

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
