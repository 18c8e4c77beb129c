"""Whole-model latency: the predicted sum of a model's conv/linear layers, calibrated on whole
models measured end to end on the device (the model table), to account for the rest: element-wise
ops, pooling, glue and the runtime's calls.

``measured ≈ scale × Σ layers + offset_ms``, fitted on each model's fastest pass (of its quiet
rows) by least squared relative error: pruned models run tens of times faster than the dense one,
and an error in ms would serve the dense model alone. Each model's error is also scored by a
calibration fitted without that model's rows, so the reported figures are held out.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..layers import LayerConfig
from .selection import fastest_pass


def model_rows(models: pd.DataFrame, predictor) -> pd.DataFrame:
    """Successful, quiet model-table rows of the predictor's device, schedule policy and protocol,
    every pass, with ``layers_ms``, the predicted sum of their layers."""
    rows = models[
        (models.status == "ok")
        & models.quiet.ne(False)
        & (models.device == predictor.device)
        & (models.schedule == predictor.schedule)
        & (models.protocol_id == predictor.protocol_id)
    ]
    sums = {
        text: float(predictor.predict([LayerConfig.from_dict(d) for d in json.loads(text)]).sum())
        for text in rows.layers.unique()
    }
    return rows.assign(layers_ms=rows.layers.map(sums).astype(float)).reset_index(drop=True)


def fit(rows: pd.DataFrame) -> tuple[float, float]:
    """``(scale, offset_ms)`` for ``rows`` (``layers_ms``, ``latency_ms``, ``model_id``)."""
    fastest = fastest_pass(rows, "model_id")
    return fit_line(fastest.layers_ms.to_numpy(), fastest.latency_ms.to_numpy())


def fit_line(layers_ms: np.ndarray, measured_ms: np.ndarray) -> tuple[float, float]:
    """``(scale, offset_ms)`` of ``measured ≈ scale × layers + offset``, offset ≥ 0, with the least
    squared relative error."""
    x, y = layers_ms / measured_ms, 1.0 / measured_ms
    if len(np.unique(layers_ms)) >= 2:
        (scale, offset), *_ = np.linalg.lstsq(np.stack([x, y], axis=1), np.ones_like(x), rcond=None)
        if scale > 0 and offset >= 0:
            return float(scale), float(offset)
    return float(x.sum() / np.dot(x, x)), 0.0


def calibrate(predictor, models: pd.DataFrame) -> dict | None:
    """The calibration of ``predictor`` on ``models`` (a model table), with each model's held-out
    error (``held_out_mape``); None when the table has no rows of the predictor's schedule policy
    and protocol."""
    rows = model_rows(models, predictor)
    if rows.empty:
        return None
    fastest = fastest_pass(rows, "model_id")
    measured, layers = fastest.latency_ms.to_numpy(), fastest.layers_ms.to_numpy()
    scale, offset = fit_line(layers, measured)
    held_out = np.empty(len(fastest))
    for name in fastest.model.unique():
        others = rows[rows.model != name]
        s, o = fit(others) if not others.empty else (1.0, 0.0)
        mine = (fastest.model == name).to_numpy()
        held_out[mine] = s * layers[mine] + o
    return _record(scale, offset, fastest, held_out)


def _record(scale: float, offset: float, fastest: pd.DataFrame, held_out: np.ndarray) -> dict:
    """A calibration as ``predictor.json`` keeps it: the line, and each model of ``fastest`` (one
    row per model) with its prediction by a line fitted without it (``held_out``)."""
    error = held_out / fastest.latency_ms.to_numpy() - 1
    return {
        "scale": scale,
        "offset_ms": offset,
        "rows": int(len(fastest)),
        "models": sorted(fastest.model.unique()),
        "held_out_mape": float(np.mean(np.abs(error))) if np.isfinite(error).all() else None,
        "cases": [
            {
                "model": m,
                "model_id": i,
                "measured_ms": float(v),
                "layers_ms": float(s),
                "predicted_ms": float(p),
                "error": float(e),
            }
            for m, i, v, s, p, e in zip(
                fastest.model, fastest.model_id, fastest.latency_ms, fastest.layers_ms, held_out, error
            )
        ],
    }


def scaled(source: dict, rows: pd.DataFrame) -> tuple[float, float]:
    """``(scale, offset_ms)``: the calibration ``source`` (another device's) times the one factor
    that fits ``rows`` (``layers_ms``, ``latency_ms``: one per model) with the least squared
    relative error."""
    x = ((source["scale"] * rows.layers_ms + source["offset_ms"]) / rows.latency_ms).to_numpy()
    factor = float(x.sum() / np.dot(x, x))
    return factor * source["scale"], factor * source["offset_ms"]


OWN_MODELS = 3


def transferred(predictor, models: pd.DataFrame, source: dict | None) -> dict | None:
    """The calibration of a few-shot predictor (``source``: its source device's calibration, or
    None): its own (:func:`calibrate`) once its device has timed ``OWN_MODELS`` whole models;
    below that, the source's times one factor fitted on the models it has timed (:func:`scaled`;
    each scored by a factor fitted on the others, where there are others), or the source's as is
    when it has timed none. ``method`` says which."""
    rows = model_rows(models, predictor)
    timed = rows.model_id.nunique()
    if source is None or timed >= OWN_MODELS:
        own = calibrate(predictor, models)
        return own and {**own, "method": "own"}
    if not timed:
        return {
            "scale": source["scale"],
            "offset_ms": source["offset_ms"],
            "rows": 0,
            "models": [],
            "held_out_mape": None,
            "cases": [],
            "method": "source",
        }
    fastest = fastest_pass(rows, "model_id")
    scale, offset = scaled(source, fastest)
    held_out = np.array(
        [
            np.dot(
                scaled(source, fastest[fastest.model != name]) if (fastest.model != name).any() else (np.nan, np.nan),
                (layers, 1.0),
            )
            for name, layers in zip(fastest.model, fastest.layers_ms)
        ]
    )
    return {**_record(scale, offset, fastest, held_out), "method": "source's shape, target's scale"}
