"""How far a table's latencies can be trusted: whether each measurement's independent trials
agreed, and whether the device was quiet while they were taken.

A row measured with trials (:mod:`hwloop.runner`) *agrees within ±b %* when every trial its
latency is made from lies within b % of it: all of them, or all but the fastest and the slowest
from :data:`TRIM_FROM` trials on (one trial that landed in another state of the device does not
move the latency, and does not count against it). A table whose measurements do not agree
comes from a host too noisy to learn from: a predictor fitted on it learns the noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BANDS = (5, 10)
COLUMNS = ["status", "latency_ms", "trial_latencies_ms", "quiet", "disturbed"]
TRUSTED = 0.95  # share of measurements whose trials agree within ±10 % that a table needs to be learnt from
TRIM_FROM = 5  # trials from which a latency leaves out the fastest and the slowest one


def agreement(rows: pd.DataFrame) -> dict:
    """For the successful rows of ``rows`` measured in trials: how many (``measured``), the share
    whose trials agree within each of :data:`BANDS` (``within_5``, ``within_10``), the share timed
    on a quiet device (``quiet``) and the trials dropped as disturbed (``disturbed``). ``measured``
    is 0 for a table of rows without trials."""
    ok = rows[rows.status == "ok"].reset_index(drop=True)
    trials = ok.trial_latencies_ms.explode().dropna().astype(float)
    if trials.empty:
        return {"measured": 0}
    by_row = trials.groupby(level=0)
    count, rank = by_row.transform("size"), by_row.rank(method="first")
    kept = trials[(count < TRIM_FROM) | ((rank > 1) & (rank < count))]
    spread = (kept / ok.latency_ms.to_numpy()[kept.index] - 1).abs().groupby(level=0).max().to_numpy()
    ok = ok.loc[kept.index.unique()]
    return {
        "measured": int(len(ok)),
        **{f"within_{b}": float(np.mean(spread <= b / 100)) for b in BANDS},
        "quiet": float(ok.quiet.fillna(True).astype(bool).mean()),
        "disturbed": int(ok.disturbed.fillna(0).sum()),
    }


def warning(record: dict) -> str | None:
    """Why a table with :func:`agreement` ``record`` should not be learnt from, or None."""
    if not record.get("measured") or record["within_10"] >= TRUSTED:
        return None
    return (
        f"the trials of only {record['within_10']:.0%} of its measurements agree within ±10 % (a table to learn "
        f"from needs {TRUSTED:.0%}; {1 - record['quiet']:.0%} were timed while another process used the timing "
        "CPU): the device was too noisy. Measure again when it is quieter (`hwloop collect --force`), "
        "or pin the device's protocol to a CPU nothing else uses (`cpus:`)"
    )
