"""Whole-model latency: the predicted sum of a model's conv/linear layers, calibrated on whole
models measured end to end on the device (the model table), to account for the rest: element-wise
ops, pooling, glue, the runtime's calls, and weights read from memory.

``measured ≈ scale × Σ layers + offset_ms + spill_ms_per_mib × W × share``, where ``W`` is the
model's weights in MiB and ``share`` the part of them read from memory: 0 up to
``spill_from_mib``, rising linearly to 1 at ``spill_to_mib``. A layer timed alone finds its
weights in the caches; inside a model whose weights outgrow the last-level cache, each run reads
them from memory again, a cost that grows with the weights rather than with the layers' time, and
that sets in gradually as more of them miss. Both ends are measured models' weights, with at least
:data:`SPILL_SIDE` models at or below the first and at or above the second; the spill is kept where
it at least halves the line's error (``spill_from_mib`` None otherwise). Fitted on each model's
fastest pass (of its quiet rows) by least squared relative error: pruned models run tens of times
faster than the dense one, and an error in ms would serve the dense model alone. Each model's error
is also scored by a calibration fitted without that model's rows, so the reported figures are held
out.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ..layers import LayerConfig
from .selection import fastest_pass

FIELDS = ("scale", "offset_ms", "spill_ms_per_mib", "spill_from_mib", "spill_to_mib")
"""A calibration's fit, as ``predictor.json`` keeps it beside its cases."""
NO_SPILL = {"spill_ms_per_mib": 0.0, "spill_from_mib": None, "spill_to_mib": None}
SPILL_SIDE = 2
"""Models a spill needs at or below its start and at or above its end: the line rests on the first,
the cost per MiB on the second."""


def weights_mib(layers: list[LayerConfig]) -> float:
    """The weights of ``layers`` in MiB."""
    return sum(int(np.prod(c.weight_shape)) * np.dtype(c.dtype).itemsize for c in layers) / 2**20


def model_rows(models: pd.DataFrame, predictor) -> pd.DataFrame:
    """Successful, quiet model-table rows of the predictor's device, schedule policy and protocol,
    every pass, with ``layers_ms``, the predicted sum of their layers, and ``weights_mib``."""
    rows = models[
        (models.status == "ok")
        & models.quiet.ne(False)
        & (models.device == predictor.device)
        & (models.schedule == predictor.schedule)
        & (models.protocol_id == predictor.protocol_id)
    ]
    layers = {text: [LayerConfig.from_dict(d) for d in json.loads(text)] for text in rows.layers.unique()}
    sums = {text: float(predictor.predict(configs).sum()) for text, configs in layers.items()}
    weights = {text: weights_mib(configs) for text, configs in layers.items()}
    return rows.assign(
        layers_ms=rows.layers.map(sums).astype(float), weights_mib=rows.layers.map(weights).astype(float)
    ).reset_index(drop=True)


def fit(rows: pd.DataFrame) -> dict:
    """The calibration (:func:`fit_spill`) of ``rows`` (``layers_ms``, ``weights_mib``,
    ``latency_ms``, ``model_id``)."""
    fastest = fastest_pass(rows, "model_id")
    return fit_spill(*(fastest[c].to_numpy() for c in ("layers_ms", "weights_mib", "latency_ms")))


def fit_line(layers_ms: np.ndarray, measured_ms: np.ndarray) -> tuple[float, float]:
    """``(scale, offset_ms)`` of ``measured ≈ scale × layers + offset``, offset ≥ 0, with the least
    squared relative error."""
    x, y = layers_ms / measured_ms, 1.0 / measured_ms
    if len(np.unique(layers_ms)) >= 2:
        (scale, offset), *_ = np.linalg.lstsq(np.stack([x, y], axis=1), np.ones_like(x), rcond=None)
        if scale > 0 and offset >= 0:
            return float(scale), float(offset)
    return float(x.sum() / np.dot(x, x)), 0.0


def fit_spill(layers_ms: np.ndarray, weights: np.ndarray, measured_ms: np.ndarray) -> dict:
    """The calibration (:data:`FIELDS`, see the module) of models with predicted layer sums
    ``layers_ms``, weights ``weights`` (MiB) and latencies ``measured_ms``: the line of
    :func:`fit_line`, or, where one at least halves its squared relative error, the line with the
    spill that fits them best."""
    best = {**dict(zip(FIELDS, fit_line(layers_ms, measured_ms))), **NO_SPILL}
    least = _squared_error(best, layers_ms, weights, measured_ms) / 2
    sizes = np.unique(weights)
    for start, low in enumerate(sizes):
        for high in sizes[start + 1 :]:
            if (weights <= low).sum() < SPILL_SIDE or (weights >= high).sum() < SPILL_SIDE:
                continue
            terms = np.column_stack([layers_ms, np.ones_like(layers_ms), _spilled(weights, low, high)])
            terms /= measured_ms[:, None]
            norm = terms.max(axis=0)
            coefficients, _ = nnls(terms / norm, np.ones_like(measured_ms))
            scale, offset, per_mib = coefficients / norm
            if per_mib <= 0:
                continue
            line = dict(zip(FIELDS, (float(scale), float(offset), float(per_mib), float(low), float(high))))
            error = _squared_error(line, layers_ms, weights, measured_ms)
            if error < least:
                best, least = line, error
    return best


def predicted(calibration: dict, layers_ms, weights) -> np.ndarray:
    """Whole-model latency (ms) of models with predicted layer sums ``layers_ms`` and weights
    ``weights`` (MiB) under ``calibration`` (one without spill fields spills nothing)."""
    layers_ms, weights = np.asarray(layers_ms, dtype=float), np.asarray(weights, dtype=float)
    low, high = calibration.get("spill_from_mib"), calibration.get("spill_to_mib")
    spill = 0.0 if low is None else calibration["spill_ms_per_mib"] * _spilled(weights, low, high)
    return calibration["scale"] * layers_ms + calibration["offset_ms"] + spill


def _spilled(weights: np.ndarray, low: float, high: float) -> np.ndarray:
    """The MiB of ``weights`` read from memory: none up to ``low``, a share rising linearly to all at ``high``."""
    return weights * np.clip((weights - low) / (high - low), 0, 1)


def _squared_error(calibration: dict, layers_ms, weights, measured_ms) -> float:
    return float(np.sum((predicted(calibration, layers_ms, weights) / measured_ms - 1) ** 2))


def calibrate(predictor, models: pd.DataFrame) -> dict | None:
    """The calibration of ``predictor`` on ``models`` (a model table), with each model's held-out
    error (``held_out_mape``); None when the table has no rows of the predictor's schedule policy
    and protocol."""
    rows = model_rows(models, predictor)
    if rows.empty:
        return None
    fastest = fastest_pass(rows, "model_id")
    held_out = np.empty(len(fastest))
    for name in fastest.model.unique():
        others = rows[rows.model != name]
        line = fit(others) if not others.empty else {"scale": 1.0, "offset_ms": 0.0}
        mine = (fastest.model == name).to_numpy()
        held_out[mine] = predicted(line, fastest.layers_ms[mine], fastest.weights_mib[mine])
    return _record(fit(rows), fastest, held_out)


def _record(calibration: dict, fastest: pd.DataFrame, held_out: np.ndarray) -> dict:
    """A calibration as ``predictor.json`` keeps it: the fit, and each model of ``fastest`` (one
    row per model) with its prediction by a fit without it (``held_out``)."""
    error = held_out / fastest.latency_ms.to_numpy() - 1
    return {
        **calibration,
        "rows": int(len(fastest)),
        "models": sorted(fastest.model.unique()),
        "held_out_mape": float(np.mean(np.abs(error))) if np.isfinite(error).all() else None,
        "cases": [
            {
                "model": m,
                "model_id": i,
                "measured_ms": float(v),
                "layers_ms": float(s),
                "weights_mib": float(w),
                "predicted_ms": float(p),
                "error": float(e),
            }
            for m, i, v, s, w, p, e in zip(
                fastest.model,
                fastest.model_id,
                fastest.latency_ms,
                fastest.layers_ms,
                fastest.weights_mib,
                held_out,
                error,
            )
        ],
    }


def scaled(source: dict, rows: pd.DataFrame) -> dict:
    """The calibration ``source`` (another device's) times the one factor that fits ``rows``
    (``layers_ms``, ``weights_mib``, ``latency_ms``: one per model) with the least squared relative
    error; where its weights spill is the source's."""
    x = (predicted(source, rows.layers_ms, rows.weights_mib) / rows.latency_ms).to_numpy()
    factor = float(x.sum() / np.dot(x, x))
    return {
        "scale": factor * source["scale"],
        "offset_ms": factor * source["offset_ms"],
        "spill_ms_per_mib": factor * source.get("spill_ms_per_mib", 0.0),
        "spill_from_mib": source.get("spill_from_mib"),
        "spill_to_mib": source.get("spill_to_mib"),
    }


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
    line = {**NO_SPILL, **{k: source[k] for k in FIELDS if k in source}}
    if not timed:
        return {**line, "rows": 0, "models": [], "held_out_mape": None, "cases": [], "method": "source"}
    fastest = fastest_pass(rows, "model_id")
    held_out = np.array(
        [
            predicted(scaled(line, fastest[fastest.model != name]), layers, weights)
            if (fastest.model != name).any()
            else np.nan
            for name, layers, weights in zip(fastest.model, fastest.layers_ms, fastest.weights_mib)
        ]
    )
    return {**_record(scaled(line, fastest), fastest, held_out), "method": "source's shape, target's scale"}
