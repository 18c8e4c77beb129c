"""How far a table's latencies can be trusted: whether each measurement's independent trials
agreed, and whether the device was quiet while they were taken.

A row measured with trials (:mod:`hwloop.runner`) *agrees within ±b %* when every trial its
latency is made from lies within b % of it: all of them, or all but the fastest and the slowest
from :data:`TRIM_FROM` trials on (one trial that landed in another state of the device does not
move the latency, and does not count against it). A measurement whose trials do not agree within
±:data:`LEARNT` % is taken again at the end of its collection, and gives way to a measurement of
the same config that agrees (:mod:`hwloop.predictor.selection`). A table whose measurements still
do not agree comes from a host too noisy to learn from: a predictor fitted on it learns the noise.
One measurement that disagrees does not make a table too noisy: in a table of 19 it alone is over
5 %, and a device whose trials agree 95 % of the time has one or more in most such tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

BANDS = (5, 10)
COLUMNS = ["status", "latency_ms", "trial_latencies_ms", "quiet", "disturbed"]
LEARNT = 10  # a measurement is learnt from when its trials agree within ± this many per cent
TRUSTED = 0.95  # share of measurements whose trials agree within ±LEARNT % that a table needs to be learnt from
TRIM_FROM = 5  # trials from which a latency leaves out the fastest and the slowest one


def agreement(rows: pd.DataFrame) -> dict:
    """For the successful rows of ``rows`` measured in trials: how many (``measured``), the share
    whose trials agree within each of :data:`BANDS` (``within_5``, ``within_10``), the share timed
    on a quiet device (``quiet``) and the trials dropped as disturbed (``disturbed``). ``measured``
    is 0 for a table of rows without trials."""
    return agreement_of(
        *trial_arrays(rows),
        rows.quiet.fillna(True).astype(bool).to_numpy(),
        rows.disturbed.fillna(0).to_numpy(dtype=float),
    )


def disagree(rows: pd.DataFrame) -> np.ndarray:
    """Which rows of ``rows`` succeeded with trials that do not agree within ±:data:`LEARNT` %."""
    return spreads(*trial_arrays(rows)) > LEARNT / 100


def superseded(spread: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which rows, of :func:`spreads` ``spread``, have trials that disagree while a row of the same
    key (a config) agrees: a retake that agreed stands for them."""
    agreeing = np.unique(keys[spread <= LEARNT / 100])
    return (spread > LEARNT / 100) & np.isin(keys, agreeing)


def trial_arrays(rows: pd.DataFrame) -> tuple:
    """Whether each row succeeded, its latency, its count of trials, and every row's trials in turn."""
    lists = rows.trial_latencies_ms.to_numpy()
    counts = np.fromiter((0 if t is None else len(t) for t in lists), dtype=np.int64, count=len(lists))
    return (
        rows.status.eq("ok").to_numpy(),
        rows.latency_ms.to_numpy(dtype=float, na_value=np.nan),
        counts,
        np.concatenate([np.asarray(t, dtype=float) for t in lists[counts > 0]] or [np.empty(0)]),
    )


def agreement_of(ok, latency_ms, trial_counts, trials, quiet, disturbed) -> dict:
    """:func:`agreement` of rows given as arrays: whether each succeeded, its latency, how many
    trials it has, every row's trials one after another, whether it was quiet (unknown: quiet)
    and its trials dropped as disturbed (unknown: 0)."""
    spread = spreads(ok, latency_ms, trial_counts, trials)
    measured = ~np.isnan(spread)
    if not measured.any():
        return {"measured": 0}
    return {
        "measured": int(measured.sum()),
        **{f"within_{b}": float(np.mean(spread[measured] <= b / 100)) for b in BANDS},
        "quiet": float(np.mean(quiet[measured])),
        "disturbed": int(disturbed[measured].sum()),
    }


def spreads(ok, latency_ms, trial_counts, trials) -> np.ndarray:
    """How far each row's trials lie from its latency at most, as a share of it (the trials that
    count, as :func:`agreement_of` takes them): NaN for a row that failed or has no trials."""
    row = np.repeat(np.arange(len(ok)), trial_counts)
    use = ok[row] & ~np.isnan(trials)
    row, trials = row[use], trials[use]
    order = np.lexsort((trials, row))  # each row's trials, fastest first
    row, trials = row[order], trials[order]
    count = np.bincount(row, minlength=len(ok))
    rank = np.arange(len(row)) - (np.cumsum(count) - count)[row]
    kept = (count[row] < TRIM_FROM) | ((rank > 0) & (rank < count[row] - 1))
    spread = np.where(count > 0, 0.0, np.nan)
    np.maximum.at(spread, row[kept], np.abs(trials[kept] / latency_ms[row[kept]] - 1))
    return spread


def warning(record: dict) -> str | None:
    """Why a table with :func:`agreement` ``record`` should not be learnt from, or None."""
    share = record.get(f"within_{LEARNT}")
    if not record.get("measured") or share >= TRUSTED or round((1 - share) * record["measured"]) <= 1:
        return None
    return (
        f"the trials of only {share:.1%} of its measurements agree within ±{LEARNT} % (a table to learn "
        f"from needs {TRUSTED:.0%}; {1 - record['quiet']:.0%} were timed while another process used the timing "
        "CPU): the device was too noisy. Measure again when it is quieter (`hwloop collect --force`), "
        "or pin the device's protocol to a CPU nothing else uses (`cpus:`)"
    )
