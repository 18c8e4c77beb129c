"""The learned latency model, which knows nothing of devices or files
(:class:`hwloop.predictor.Predictor` is the saved, described predictor that holds one; held-out
scores, sampling and plots train and use bare ones).

Two stages. A **work model** per path of the ``default`` rules (:mod:`hwloop.predictor.rules`):
latency as a non-negative sum of the loops' vector multiply-adds, inner steps, vector loads,
outputs written, repacked weight bytes, input bytes, outer tiles, accumulators allocated on every call
and a constant, fitted by least relative squares. It is smooth in every dimension, so a 21² input lands
between 14² and 28² and an unseen channel count between its neighbours. An **XGBoost booster** then
learns the log of what the work model misses (cache fit, vector fill, loop overheads) from the
features (:mod:`hwloop.predictor.features`), starting from the work model's log latency as its base
margin.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy.optimize import nnls

from . import features, rules

PARAMS = {
    "objective": "reg:squarederror",
    "eta": 0.1,
    "max_depth": 4,
    "min_child_weight": 1.0,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "lambda": 1.0,
    "tree_method": "hist",
    "max_bin": 512,
}
ROUNDS = 200
STEADY_CV = 0.05
TERMS = (
    "vector_fmas",
    "steps",
    "loads",
    "outputs",
    "weight_bytes",
    "input_bytes",
    "tiles",
    "exp_outputs",
    "clip_outputs",
    "workspaces",
)  # and a constant


class LatencyModel:
    """Predicts a layer's latency (ms) from its config, for a CPU with ``lanes`` float32 SIMD lanes
    and ``registers`` vector registers: the work model's coefficients per path (``work``: path name
    to the coefficients of :data:`TERMS` and the constant, in ms; ``"any"`` for a path not trained on)
    corrected by ``booster``."""

    def __init__(self, booster: xgb.Booster, lanes: int, registers: int, work: dict[str, list[float]]):
        self.booster = booster
        self.lanes = lanes
        self.registers = registers
        self.work = work

    @classmethod
    def train(cls, rows: pd.DataFrame, seed: int = 0, prior: dict[str, list[float]] | None = None) -> "LatencyModel":
        """A latency model fitted to ``rows`` (table rows of one target: their config columns,
        ``latency_ms``, ``latency_cv`` and ``target``).

        Unsteady measurements (coefficient of variation above ``STEADY_CV``, the default protocol's
        retake threshold) weigh less: ``1 / (1 + (cv / STEADY_CV)²)``. With ``prior`` (work
        coefficients by path, as :attr:`work`), each path's coefficients are drawn towards the prior's
        (:func:`fit_work`).
        """
        if rows.target.nunique() != 1:
            raise ValueError(f"a latency model learns rows of one target, not {rows.target.nunique()}")
        lanes, registers = vector_unit(rows.target.iloc[0])
        cols = features.from_frame(rows)
        quantities = rules.quantities(cols, lanes, registers)
        latency = rows.latency_ms.to_numpy()
        cv = rows.latency_cv.fillna(0.0).to_numpy()
        weight = 1.0 / (1.0 + (cv / STEADY_CV) ** 2)
        terms = work_terms(quantities)

        def prior_of(path: str) -> np.ndarray | None:
            return None if prior is None else np.asarray(prior.get(path, prior["any"]))

        work = {"any": fit_work(terms, latency, weight, prior_of("any"))}
        for index in np.unique(quantities["path"]):
            mine, path = quantities["path"] == index, rules.PATHS[index]
            work[path] = fit_work(terms[mine], latency[mine], weight[mine], prior_of(path))
        model = cls(None, lanes, registers, work)
        x = features.matrix(cols, lanes, quantities)
        data = xgb.DMatrix(x, label=np.log(latency), base_margin=model._log_work(quantities), weight=weight)
        model.booster = xgb.train({**PARAMS, "seed": seed}, data, num_boost_round=ROUNDS)
        return model

    def predict(self, configs) -> np.ndarray:
        """Latency in ms of each config (a list of LayerConfig)."""
        return self.predict_columns(features.arrays(list(configs)))

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Latency in ms of each row of a frame with the config columns (a table, say)."""
        return self.predict_columns(features.from_frame(frame))

    def predict_columns(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Latency in ms from config columns as arrays: the fast path for large batches (each
        distinct config is predicted once)."""
        if len(cols["op"]) == 0:
            return np.empty(0)
        unique, inverse = features.distinct(cols)
        quantities = rules.quantities(unique, self.lanes, self.registers)
        x = features.matrix(unique, self.lanes, quantities)
        return np.exp(self.booster.inplace_predict(x, base_margin=self._log_work(quantities)))[inverse]

    def unlearnt_paths(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """The path of the rules (a name of :data:`rules.PATHS`) each config of ``cols`` takes, or
        "" where the model learnt that path from rows of its own: elsewhere its work model is the fit of
        every path and the booster extrapolates."""
        path = rules.path_names(rules.quantities(cols, self.lanes, self.registers)["path"])
        return np.where(np.isin(path, list(self.work)), "", path)

    def work_ms(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """The work model's latency (ms) of each config of ``cols`` (config columns), without the booster."""
        return np.exp(self._log_work(rules.quantities(cols, self.lanes, self.registers)))

    def _log_work(self, quantities: dict[str, np.ndarray]) -> np.ndarray:
        """Natural log of the work model's latency (ms) of each config."""
        terms = work_terms(quantities)
        coefficients = np.array([self.work.get(path, self.work["any"]) for path in rules.PATHS])
        latency = np.einsum("ij,ij->i", terms, coefficients[quantities["path"]])
        return np.log(np.maximum(latency, 1e-9))


NNLS_ITERATIONS = 100
"""Iterations per coefficient the non-negative least squares may take (scipy's default, 3, gives up on
near-degenerate tables, such as one timed beside other work)."""


def work_terms(quantities: dict[str, np.ndarray]) -> np.ndarray:
    """The work model's terms of each config (rows: :data:`TERMS` and a constant)."""
    return np.column_stack([*(quantities[t] for t in TERMS), np.ones(len(quantities["path"]))])


def fit_work(
    terms: np.ndarray, latency: np.ndarray, weight: np.ndarray, prior: np.ndarray | None = None, anchor: float = 1.0
) -> list[float]:
    """Non-negative coefficients of ``terms`` (rows) for ``latency``, least weighted relative squares.

    With ``prior`` (coefficients), each coefficient is also drawn towards the prior's: its move costs
    what it moves the mean row's relative error, counted as ``anchor`` rows; a term no row uses keeps
    the prior's coefficient."""
    root = np.sqrt(weight)
    norm = np.maximum(np.abs(terms).max(axis=0), 1e-30)
    a, b = terms / norm * (root / latency)[:, None], root
    if prior is not None:
        pull = np.sqrt(anchor) * np.mean(terms / norm / latency[:, None], axis=0)
        a, b = np.vstack([a, np.diag(pull)]), np.concatenate([b, pull * prior * norm])
    coefficients, _ = nnls(a, b, maxiter=NNLS_ITERATIONS * a.shape[1])
    coefficients = coefficients / norm
    if prior is not None:
        coefficients = np.where(pull > 0, coefficients, prior)
    return [float(c) for c in coefficients]


def vector_unit(target_json: str) -> tuple[int, int]:
    """``(float32 lanes, vector registers)`` of a table's target (32 and 32 for GPU targets)."""
    target = json.loads(target_json)
    if target.get("kind") != "llvm":
        return 32, 32
    from ..schedules.default import cpu_model

    cpu = cpu_model(target)
    return cpu.lanes("float32"), cpu.registers
