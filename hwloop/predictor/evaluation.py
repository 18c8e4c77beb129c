"""How well a predictor does, honestly: scores on rows it never saw, beside the device's noise floor.

Scores are the share of rows predicted within ±5/10/15 %, RMSE (ms), MAPE and Spearman rank
correlation, overall and per op family. Held-out splits: random configs, unseen channel counts
(every row with a held-out count leaves training), unseen shapes (input size, kernel, stride: drawn
at random, so a held-out size may lie outside those measured) and sizes between (every row of an
input size lying between two other sizes measured with the same op, kernel and stride).
The noise floor scores single repeats against their row's median and, for configs measured in
several passes, the other passes against the fastest: a predictor cannot beat it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from . import rules
from .features import from_frame, shape_key
from .latency import LatencyModel
from .selection import select

BANDS = (5, 10, 15)
HOLDOUT = 0.25


def scores(measured: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy of ``predicted`` against ``measured`` latencies (ms)."""
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    error = np.abs(predicted / measured - 1.0)
    result = {f"within_{b}": float(np.mean(error <= b / 100)) for b in BANDS}
    result.update(
        rmse_ms=float(np.sqrt(np.mean((predicted - measured) ** 2))),
        mape=float(np.mean(error)),
        spearman=spearman(measured, predicted),
        rows=int(len(measured)),
    )
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (ties share their mean rank); None when undefined."""
    if len(a) < 2:
        return None
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def report(rows: pd.DataFrame, predicted: np.ndarray) -> dict:
    """Overall scores, scores per op family and the noise floor of ``rows``."""
    measured = rows.latency_ms.to_numpy()
    result = scores(measured, predicted)
    result["ops"] = {
        op: scores(measured[mask], predicted[mask])
        for op in sorted(rows.op.unique())
        for mask in [rows.op.to_numpy() == op]
    }
    result["noise"] = noise_floor(rows)
    return result


def noise_floor(rows: pd.DataFrame) -> dict:
    """Single repeats scored against their row's median (the share within each band and their
    MAPE) and, under ``passes``, the slower passes of each config against its fastest."""
    floor = _agreement(zip(rows.latencies_ms, rows.latency_ms))
    if "pass_latencies_ms" in rows:
        passes = _agreement((sorted(p)[1:], min(p)) for p in rows.pass_latencies_ms if len(p) > 1)
        if passes:
            floor["passes"] = passes
    return floor


def collections_agree(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """How a second collection of some configs (rows, one per config) agrees with the first: the
    share within each band and the MAPE of the second's latency against the first's."""
    both = (
        first.set_index("config_id")
        .latency_ms.to_frame("first")
        .join(second.set_index("config_id").latency_ms.to_frame("second"), how="inner")
    )
    error = np.abs(both.second / both.first - 1)
    return {
        "configs": int(len(both)),
        **{f"within_{b}": float(np.mean(error <= b / 100)) for b in BANDS},
        "mape": float(error.mean()),
    }


def _agreement(pairs) -> dict:
    """Share within each band and MAPE of values against their reference, from (values, reference) pairs."""
    errors = np.concatenate(
        [np.abs(np.asarray(v, dtype=float) / ref - 1.0) for v, ref in pairs if v is not None and len(v)] or [[]]
    )
    if not len(errors):
        return {}
    return {
        **{f"within_{b}": float(np.mean(errors <= b / 100)) for b in BANDS},
        "mape": float(np.mean(errors)),
        "samples": int(len(errors)),
    }


def splits(rows: pd.DataFrame, seed: int = 0) -> dict[str, np.ndarray]:
    """Boolean test masks: ``config`` (random rows), ``unseen_channels``, ``unseen_shapes``,
    ``sizes_between``; a split that would hold out nothing or everything is left out.

    ``unseen_channels`` never holds out a count that an op never varies from (a classifier's
    outputs): that would hold out every row of the op, which is not a count between others."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    result = {"config": rng.permutation(n) < max(int(round(HOLDOUT * n)), 1)}
    fixed = [
        values[0]
        for _, op in rows.groupby("op")
        for values in (op.in_channels.unique(), op.out_channels.unique())
        if len(values) == 1
    ]
    counts = np.setdiff1d(np.union1d(rows.in_channels.unique(), rows.out_channels.unique()), fixed)
    held = rng.choice(counts, size=max(int(round(HOLDOUT * len(counts))), 1), replace=False)
    result["unseen_channels"] = (rows.in_channels.isin(held) | rows.out_channels.isin(held)).to_numpy()
    shape = shape_key(rows)
    test = np.zeros(n, dtype=bool)
    for _, shapes in shape.groupby(rows.op):
        distinct = shapes.unique()
        if len(distinct) > 1:
            chosen = rng.choice(distinct, size=max(int(round(HOLDOUT * len(distinct))), 1), replace=False)
            test |= shape.isin(chosen).to_numpy()
    if test.any():
        result["unseen_shapes"] = test
    result["sizes_between"] = sizes_between(rows)
    return {name: mask for name, mask in result.items() if 0 < mask.sum() < n}


def sizes_between(rows: pd.DataFrame) -> np.ndarray:
    """Rows of an input size lying between two other sizes measured with the same op, kernel and stride."""
    cols = from_frame(rows)
    kernels = zip(cols["op"], cols["kernel"], cols["kernel_w"], cols["stride"])
    key = np.array([f"{op}:{k}x{kw}:{s}" for op, k, kw, s in kernels])
    size = rows.input_h.to_numpy()
    test = np.zeros(len(rows), dtype=bool)
    for name in np.unique(key):
        mine = key == name
        measured = np.unique(size[mine])
        test |= mine & (size > measured[0]) & (size < measured[-1])
    return test


def holdout_scores(
    rows: pd.DataFrame, seed: int = 0, train: Callable[[pd.DataFrame, int], LatencyModel] = LatencyModel.train
) -> dict:
    """:func:`report` of each split, from a latency model trained (by ``train``) on the rest of ``rows``,
    with ``unlearnt_paths``: how many held-out rows take each path of the rules that no training row took."""
    result = {}
    for name, test in splits(rows, seed).items():
        train_rows, test_rows = rows[~test], rows[test].reset_index(drop=True)
        probe = train(train_rows, seed)
        result[name] = {
            **report(test_rows, probe.predict_frame(test_rows)),
            "train_rows": int(len(train_rows)),
            "unlearnt_paths": rules.path_counts(probe.unlearnt_paths(from_frame(test_rows))),
        }
    return result


def evaluate(predictor, table: pd.DataFrame, source: str) -> dict:
    """:func:`report` of ``predictor`` on the rows of ``table`` that match what it was trained on
    (device, schedule policy, protocol); a table without such rows is refused."""
    chosen = select(table, source, predictor.schedule, predictor.protocol_id, predictor.device)
    return {
        "device": predictor.device,
        "schedule": predictor.schedule,
        "protocol_id": predictor.protocol_id,
        **report(chosen.rows, predictor.predict_frame(chosen.rows)),
        "rows_ignored": int(len(table) - chosen.measurements),
    }
