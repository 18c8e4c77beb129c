"""Which rows of a table one predictor learns from or is scored on: successful rows of one device,
one schedule policy, one protocol and one target. Rows measured under other conditions are other
latencies, so mixing them is refused rather than averaged.

Rows timed while the device was busy (not *quiet*, :mod:`hwloop.runner`) are left out, and so is a
row whose trials disagree where its config has a row whose trials agree
(:func:`hwloop.trust.superseded`). A config measured in several passes counts once, by its fastest
pass: a disturbance only adds time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..schedules import unrevised
from ..trust import spreads, superseded, trial_arrays
from .errors import PredictorError


@dataclass(frozen=True)
class Selection:
    rows: pd.DataFrame  # one per config, its fastest pass
    passes: pd.DataFrame  # the table's rows behind them, every pass
    device: str
    schedule: str
    protocol_id: str
    protocol: str
    target: str

    @property
    def measurements(self) -> int:
        return len(self.passes)


def select(
    table: pd.DataFrame, source: str, schedule: str, protocol_id: str | None = None, device: str | None = None
) -> Selection:
    """The successful rows of ``table`` measured with ``schedule`` (and ``protocol_id`` if given).

    ``source`` names the table in errors. Refused: no such rows (successful and quiet), rows of
    several devices, or several protocols or targets left to choose from.
    """
    ok = table[(table.status == "ok") & (table.latency_ms > 0) & table.quiet.ne(False)]
    if ok.empty:
        raise PredictorError(f"{source}: no successful measurements")
    if device is not None and set(ok.device) != {device}:
        raise PredictorError(
            f"{source}: rows of device(s) {_counts(ok.device)}, not {device!r}: "
            "a predictor learns and is scored on its own device's rows"
        )
    if ok.device.nunique() > 1:
        raise PredictorError(f"{source}: rows of several devices ({_counts(ok.device)}); one predictor per device")
    rows = ok[ok.schedule == schedule]
    if rows.empty:
        policy = unrevised(schedule)
        hint = (
            f"its {policy!r} rows were timed under earlier rules: collect them again"
            if ok.schedule.map(unrevised).eq(policy).any()
            else "a predictor learns and is scored on rows of one schedule policy only"
        )
        raise PredictorError(
            f"{source}: no rows of schedule policy {schedule!r} (it holds {_counts(ok.schedule)}); {hint}"
        )
    if protocol_id is not None:
        others = rows[rows.protocol_id != protocol_id]
        rows = rows[rows.protocol_id == protocol_id]
        if rows.empty:
            raise PredictorError(
                f"{source}: no {schedule!r} rows with protocol {protocol_id} (they have protocol "
                f"{_counts(others.protocol_id)}); latencies of another protocol are not comparable"
            )
    if rows.protocol_id.nunique() > 1:
        raise PredictorError(
            f"{source}: {schedule!r} rows of several protocols ({_counts(rows.protocol_id)}); "
            "choose one with --protocol"
        )
    if rows.target.nunique() > 1:
        raise PredictorError(
            f"{source}: {schedule!r} rows of several targets ({_counts(rows.target)}); keep one target per device table"
        )
    rows = rows[~superseded(spreads(*trial_arrays(rows)), rows.config_id.to_numpy())]
    first = rows.iloc[0]
    return Selection(fastest_pass(rows), rows, first.device, schedule, first.protocol_id, first.protocol, first.target)


def fastest_pass(rows: pd.DataFrame, key: str = "config_id") -> pd.DataFrame:
    """One row per ``key`` (a config, or a model's ``model_id``), its fastest, in table order;
    ``pass_latencies_ms`` lists the medians of all its passes."""
    passes = rows.groupby(key).latency_ms.agg(list)
    fastest = rows.sort_values("latency_ms", kind="stable").drop_duplicates(key).sort_index()
    return fastest.assign(pass_latencies_ms=fastest[key].map(passes)).reset_index(drop=True)


def _counts(column: pd.Series) -> str:
    return ", ".join(f"{value!r}: {count} rows" for value, count in column.value_counts().items())
