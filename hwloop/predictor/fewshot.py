"""A latency model for a new device from a few of its rows and a device already measured (the source).

The source's latency model is *retargeted*: its work coefficients and booster applied to what the
``default`` rules make of each layer on the new device (its vector width and registers, so the
steps of the new device's vectors are where the rules put them). The new device's rows then
correct it, per path of the rules: a scale and an overhead on the source's work model (``α × work
+ β``, non-negative, least squared relative error: a CPU without AVX runs each vector multiply-add
at about its own pace, two threads halve the work and add a fork-join), then each of the work
model's coefficients fitted to the rows, drawn towards its scaled value as strongly as
:data:`ANCHOR` rows (so a cost that differs on the new device, not only its scale, is learnt
where the rows show it, and kept where they do not). A path with fewer than :data:`PATH_ROWS` rows
takes the scale of all rows. A few shallow trees on top of the source's booster then learn what the
work model misses (:func:`transfer`).

The source's trees know its own vector unit's quirks, which another vector unit need not share:
from :data:`OWN_ROWS` rows on, the rows' own booster over the same drawn-towards work model
(:func:`own_trees`) is a candidate too. Which is used, and from which source, is chosen by how
well each fit predicts rows it was not fitted on (:func:`choose`). The result is an ordinary
:class:`~hwloop.predictor.latency.LatencyModel`, saved and used like any.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy.optimize import nnls

from . import features, rules
from .errors import PredictorError
from .latency import NNLS_ITERATIONS, PARAMS, STEADY_CV, LatencyModel, fit_work, vector_unit, work_terms

PATH_ROWS = 4
ANCHOR = 1.0
TREE_PARAMS = {**PARAMS, "max_depth": 2, "eta": 0.05}
TREE_ROUNDS = 60


def retarget(source: LatencyModel, lanes: int, registers: int) -> LatencyModel:
    """``source`` applied to a CPU with ``lanes`` float32 lanes and ``registers`` vector registers."""
    return LatencyModel(source.booster, lanes, registers, dict(source.work))


def transfer(
    source: LatencyModel,
    rows: pd.DataFrame,
    seed: int = 0,
    path_rows: int = PATH_ROWS,
    tree_rounds: int = TREE_ROUNDS,
    overhead: bool = True,
    anchor: float | None = ANCHOR,
) -> LatencyModel:
    """A latency model of the device of ``rows`` (table rows of one target, as
    :meth:`LatencyModel.train` takes them) that starts from ``source``; ``anchor`` None keeps the
    scaled work model as it is."""
    if rows.target.nunique() != 1:
        raise ValueError(f"a latency model learns rows of one target, not {rows.target.nunique()}")
    lanes, registers = vector_unit(rows.target.iloc[0])
    prior = retarget(source, lanes, registers)
    cols = features.from_frame(rows)
    quantities = rules.quantities(cols, lanes, registers)
    x = features.matrix(cols, lanes, quantities)
    latency = rows.latency_ms.to_numpy()
    weight = 1.0 / (1.0 + (rows.latency_cv.fillna(0.0).to_numpy() / STEADY_CV) ** 2)
    work = prior.work_ms(cols)
    residual = np.exp(source.booster.inplace_predict(x, base_margin=np.zeros(len(rows))))
    paths = quantities["path"]
    fits = {"any": _scale(work * residual, residual, latency, weight, overhead)}
    for index in np.unique(paths):
        mine = paths == index
        if mine.sum() >= path_rows:
            fits[rules.PATHS[index]] = _scale(
                work[mine] * residual[mine], residual[mine], latency[mine], weight[mine], overhead
            )
    terms = work_terms(quantities) * residual[:, None]
    corrected = {}
    for path in ("any", *(p for p in rules.PATHS if p in source.work or p in fits)):
        base = np.asarray(source.work.get(path, source.work["any"]))
        scale, extra = fits.get(path, fits["any"])
        coefficients = scale * base
        coefficients[-1] += extra
        mine = paths == rules.PATHS.index(path) if path != "any" else np.ones(len(rows), dtype=bool)
        if anchor is not None and mine.any():
            coefficients = fit_work(terms[mine], latency[mine], weight[mine], coefficients, anchor)
        corrected[path] = [float(c) for c in coefficients]
    model = LatencyModel(source.booster, lanes, registers, corrected)
    if tree_rounds:
        data = xgb.DMatrix(x, label=np.log(latency), base_margin=np.log(model.work_ms(cols)), weight=weight)
        model.booster = xgb.train(
            {**TREE_PARAMS, "seed": seed}, data, num_boost_round=tree_rounds, xgb_model=source.booster
        )
    return model


def _scale(
    work: np.ndarray, residual: np.ndarray, latency: np.ndarray, weight: np.ndarray, overhead: bool
) -> tuple[float, float]:
    """``(α, β)`` ≥ 0 of ``latency ≈ α × work + β × residual``, least weighted squared relative error."""
    root = np.sqrt(weight) / latency
    terms = np.column_stack([work, residual] if overhead else [work]) * root[:, None]
    norm = np.maximum(np.abs(terms).max(axis=0), 1e-30)
    coefficients, _ = nnls(terms / norm, np.sqrt(weight), maxiter=NNLS_ITERATIONS * terms.shape[1])
    coefficients = coefficients / norm
    if coefficients[0] <= 0:
        coefficients = np.array([float(np.sum(terms[:, 0] * np.sqrt(weight)) / np.sum(terms[:, 0] ** 2)), 0.0])
    return float(coefficients[0]), float(coefficients[1]) if overhead else 0.0


FOLDS = 5
OWN_ROWS = 10


def own_trees(source: LatencyModel, rows: pd.DataFrame, seed: int = 0) -> LatencyModel:
    """A latency model of ``rows`` with a booster of their own, over a work model fitted to them with
    each coefficient drawn towards ``source``'s, scaled to the new device (:func:`transfer`'s scale)."""
    scaled = transfer(source, rows, seed, tree_rounds=0, anchor=None)
    return LatencyModel.train(rows, seed, prior=scaled.work)


def transfer_from(sources: list[LatencyModel], rows: pd.DataFrame, seed: int = 0) -> LatencyModel:
    """The fit of ``rows`` that :func:`choose` finds best: a :func:`transfer` from one of ``sources``,
    or :func:`own_trees` on one's work model."""
    index = choose(sources, rows, seed)[0]
    if index < len(sources):
        return transfer(sources[index], rows, seed)
    return own_trees(sources[index - len(sources)], rows, seed)


def choose(sources: list[LatencyModel], rows: pd.DataFrame, seed: int = 0) -> tuple[int, list[float]]:
    """Which fit predicts ``rows`` best, each row predicted by a fit without it (``FOLDS``-fold): the
    index of the best candidate and each candidate's mean absolute log error. The candidates are the
    :func:`transfer` from each of ``sources`` and, from :data:`OWN_ROWS` rows on, :func:`own_trees`
    on each one's work model (index ``len(sources)`` on). The first source, with no errors, below
    two rows or when it is the only candidate."""
    candidates = [lambda train, source=source: transfer(source, train, seed) for source in sources]
    if len(rows) >= OWN_ROWS:
        candidates += [lambda train, source=source: own_trees(source, train, seed) for source in sources]
    if len(candidates) == 1 or len(rows) < 2:
        return 0, []
    fold = np.random.default_rng(seed).permutation(len(rows)) % min(FOLDS, len(rows))
    measured = rows.latency_ms.to_numpy()
    errors = []
    for fit_without in candidates:
        error = 0.0
        for k in np.unique(fold):
            test = fold == k
            predicted = fit_without(rows[~test]).predict_frame(rows[test])
            error += float(np.abs(np.log(predicted / measured[test])).sum())
        errors.append(error / len(rows))
    return int(np.argmin(errors)), errors


def fit(
    table: pd.DataFrame,
    device: str,
    sources: list,
    schedule: str = "default",
    protocol_id: str | None = None,
    source: str = "table",
    evaluate: bool = True,
    seed: int = 0,
    models: pd.DataFrame | None = None,
):
    """A :class:`~hwloop.predictor.Predictor` of ``device`` from its rows of ``table`` and the
    saved predictors ``sources`` of devices already measured (:func:`transfer_from`); like
    :meth:`Predictor.fit` otherwise. ``meta["transfer"]`` names the sources (device, booster and
    training-table hashes), each candidate's cross-validated error, the one used (``method``:
    ``transfer`` or ``own trees``) and its ``source``; the whole-model calibration comes from
    ``models`` and that source (:func:`hwloop.predictor.calibration.transferred`)."""
    from .calibration import transferred
    from .model import Predictor, rows_name
    from .selection import select

    schedule = rows_name(schedule)
    for other in sources:
        if other.device == device:
            raise PredictorError(f"{device!r}: a device cannot be its own source")
        if other.schedule != schedule:
            raise PredictorError(
                f"predictor of {other.device!r}: field 'schedule': trained on {other.schedule!r} "
                f"rows, not {schedule!r}; a transfer keeps the schedule policy"
            )
    models_of = [other.model for other in sources]
    predictor = Predictor.fit(
        table,
        device,
        schedule,
        protocol_id,
        source,
        evaluate,
        seed,
        train=lambda rows, fit_seed: transfer_from(models_of, rows, fit_seed),
    )
    rows = select(table, source, schedule, predictor.protocol_id, device).rows
    index, errors = choose(models_of, rows, seed)
    names = [f"transfer from {other.device}" for other in sources]
    if len(errors) > len(sources):
        names += [f"own trees on {other.device}'s work model" for other in sources]
    nearest = sources[index % len(sources)]
    predictor.meta["transfer"] = {
        "method": "transfer" if index < len(sources) else "own trees",
        "source": nearest.device,
        "sources": [
            {
                key: other.meta.get(key)
                for key in ("device", "booster_sha256", "table_sha256", "rows", "target", "protocol_id")
            }
            for other in sources
        ],
        "fold_errors": dict(zip(names, errors)),
    }
    if models is not None:
        predictor.meta["calibration"] = transferred(predictor, models, nearest.meta.get("calibration"))
    return predictor
