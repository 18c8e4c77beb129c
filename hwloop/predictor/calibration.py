"""Whole-model latency: the predicted sum of a model's conv/linear layers, calibrated on whole
models measured end to end on the device (the model table), to account for the rest: element-wise
ops, pooling, glue and the runtime's calls.

``measured ≈ scale × Σ layers + offset_ms``. A board's pace drifts and moves every model alike, so
the two are fitted apart. Models timed in one spell (:mod:`hwloop.pace`: a sweep of ``hwloop
measure``, a validation's dense and pruned model) share a pace: the ratios of different models
within such a spell fix the offset's share, whatever the pace; the scale then follows from each
model's fastest pass, by least squared relative error (pruned models run tens of times faster than
the dense one, and an error in ms would serve the dense model alone). When no spell holds two
models, scale and offset are fitted together on the fastest passes. Each model's error is also
scored by a calibration fitted without that model's rows, so the reported figures are held out.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from ..layers import LayerConfig
from ..pace import spells
from .selection import fastest_pass


def model_rows(models: pd.DataFrame, predictor) -> pd.DataFrame:
    """Successful model-table rows of the predictor's device, schedule policy and protocol, every
    pass, with ``layers_ms``, the predicted sum of their layers, and ``spell``, the pace they share."""
    rows = models[(models.status == "ok") & (models.device == predictor.device)
                  & (models.schedule == predictor.schedule) & (models.protocol_id == predictor.protocol_id)]
    sums = {text: float(predictor.predict([LayerConfig.from_dict(d) for d in json.loads(text)]).sum())
            for text in rows.layers.unique()}
    return rows.assign(layers_ms=rows.layers.map(sums).astype(float), spell=spells(rows)).reset_index(drop=True)


def fit(rows: pd.DataFrame) -> tuple[float, float]:
    """``(scale, offset_ms)`` for ``rows`` (``layers_ms``, ``latency_ms``, ``spell``, ``model_id``)."""
    return _fit(fastest_pass(rows, "model_id"), shared_spells(rows))


def _fit(fastest: pd.DataFrame, paired: pd.DataFrame) -> tuple[float, float]:
    """:func:`fit` from each model's fastest pass and :func:`shared_spells` of the same rows."""
    if paired.empty:
        return fit_line(fastest.layers_ms.to_numpy(), fastest.latency_ms.to_numpy())
    share = offset_share(paired)
    x = (fastest.layers_ms.to_numpy() + share) / fastest.latency_ms.to_numpy()
    scale = float(x.sum() / np.dot(x, x))
    return scale, scale * share


def shared_spells(rows: pd.DataFrame) -> pd.DataFrame:
    """Each model's fastest pass in each spell, of the spells that hold two models or more."""
    rows = fastest_pass(rows.assign(key=rows.model_id + "@" + rows.spell.astype(str)), "key")
    return rows[rows.groupby("spell").layers_ms.transform("nunique") > 1]


def offset_share(paired: pd.DataFrame) -> float:
    """``offset / scale`` (ms) that best explains the ratios between the models of each spell of
    ``paired`` (:func:`shared_spells`), whatever the spell's pace."""
    logs, spell = np.log(paired.latency_ms.to_numpy()), paired.spell.to_numpy()

    def spread(share: float) -> float:
        residual = pd.Series(logs - np.log(paired.layers_ms.to_numpy() + share))
        return float(((residual - residual.groupby(spell).transform("mean")) ** 2).sum())

    return float(minimize_scalar(spread, bounds=(0.0, float(paired.layers_ms.max())), method="bounded").x)


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
    error (``held_out_mape``) and, where it shares a spell with other models, its held-out error once
    the spell's pace is read off those models (``held_out_paced_mape``: the error of a predicted
    speed-up); None when the table has no rows of the predictor's schedule policy and protocol."""
    rows = model_rows(models, predictor)
    if rows.empty:
        return None
    fastest, paired = fastest_pass(rows, "model_id"), shared_spells(rows)
    scale, offset = _fit(fastest, paired)
    measured, layers = fastest.latency_ms.to_numpy(), fastest.layers_ms.to_numpy()
    held_out, paced = np.empty(len(fastest)), []
    for name in fastest.model.unique():
        others = rows[rows.model != name]
        s, o = fit(others) if not others.empty else (1.0, 0.0)
        mine = (fastest.model == name).to_numpy()
        held_out[mine] = s * layers[mine] + o
        for spell, timed in paired[paired.model == name].groupby("spell"):
            beside = paired[(paired.spell == spell) & (paired.model != name)]
            pace = np.exp(np.mean(np.log(beside.latency_ms / (s * beside.layers_ms + o))))
            paced.extend(pace * (s * timed.layers_ms + o) / timed.latency_ms - 1)
    error = held_out / measured - 1
    return {
        "scale": scale, "offset_ms": offset, "offset_from": "line" if paired.empty else "spells",
        "rows": int(len(fastest)), "models": sorted(fastest.model.unique()),
        "held_out_mape": float(np.mean(np.abs(error))),
        "held_out_paced_mape": float(np.mean(np.abs(paced))) if paced else None,
        "cases": [{"model": m, "model_id": i, "measured_ms": float(v), "layers_ms": float(l),
                   "predicted_ms": float(p), "error": float(e)}
                  for m, i, v, l, p, e in zip(fastest.model, fastest.model_id, measured, layers, held_out, error)],
    }
