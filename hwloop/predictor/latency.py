"""The learned latency model: an XGBoost booster on log latency and the vector width its features
assume. It knows nothing of devices or files: :class:`hwloop.predictor.Predictor` is the saved,
described predictor that holds one; held-out scores, sampling and plots train and use them bare.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xgboost as xgb

from . import features

PARAMS = {"objective": "reg:squarederror", "eta": 0.2, "max_depth": 5, "min_child_weight": 1.0,
          "subsample": 0.9, "colsample_bytree": 0.8, "lambda": 1.0, "tree_method": "hist", "max_bin": 512}
ROUNDS = 100
STEADY_CV = 0.05


class LatencyModel:
    """Predicts a layer's latency (ms) from its config, for a target with ``lanes`` float32 SIMD lanes."""

    def __init__(self, booster: xgb.Booster, lanes: int):
        self.booster = booster
        self.lanes = lanes

    @classmethod
    def train(cls, rows: pd.DataFrame, lanes: int, seed: int = 0) -> "LatencyModel":
        """A booster fitted to the log latency of ``rows``, from the padded FLOPs as base margin.

        Unsteady measurements (coefficient of variation above ``STEADY_CV``, the default protocol's
        retake threshold) weigh less: ``1 / (1 + (cv / STEADY_CV)²)``.
        """
        x = features.matrix(features.from_frame(rows), lanes)
        cv = rows.latency_cv.fillna(0.0).to_numpy()
        data = xgb.DMatrix(x, label=np.log(rows.latency_ms.to_numpy()), base_margin=features.baseline(x, lanes),
                           weight=1.0 / (1.0 + (cv / STEADY_CV) ** 2))
        return cls(xgb.train({**PARAMS, "seed": seed}, data, num_boost_round=ROUNDS), lanes)

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
        x = features.matrix(unique, self.lanes)
        return np.exp(self.booster.inplace_predict(x, base_margin=features.baseline(x, self.lanes)))[inverse]


def lanes_of(target_json: str) -> int:
    """float32 SIMD lanes of a table's target (a CPU's vector width; 32, a warp, for GPU targets)."""
    target = json.loads(target_json)
    if target.get("kind") != "llvm":
        return 32
    from ..schedules.default import vector_lanes

    return vector_lanes(target)
