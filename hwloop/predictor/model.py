"""The per-device latency predictor: a :class:`~hwloop.predictor.latency.LatencyModel` and what it
was trained on.

Saved as ``<predictors>/<device>/booster.ubj`` (XGBoost's own binary JSON) beside
``predictor.json`` (device, schedule policy, protocol, target, vector width and registers, the
work model's coefficients, feature names, training-table hash, xgboost version, metrics,
whole-model calibration, format version).
Nothing is pickled; a file that is corrupt or was made for something else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from ..schedules import PolicyError, parse_policy
from ..trust import agreement
from . import features
from .calibration import calibrate, predicted, weights_mib
from .errors import PredictorError
from .evaluation import holdout_scores
from .latency import TERMS, LatencyModel, vector_unit
from .selection import select

FORMAT_VERSION = 2
BOOSTER_FILE = "booster.ubj"
META_FILE = "predictor.json"
REQUIRED = (
    "format_version",
    "device",
    "schedule",
    "protocol_id",
    "lanes",
    "registers",
    "work",
    "features",
    "table_sha256",
    "booster_sha256",
    "xgboost_version",
)


class Predictor:
    """Predicts a layer's latency (ms) on one device, for one schedule policy and protocol: a
    latency model and the metadata saved beside it (``meta``)."""

    def __init__(self, model: LatencyModel, meta: dict):
        self.model = model
        self.meta = meta
        self._grids: dict[tuple, np.ndarray] = {}

    device = property(lambda self: self.meta["device"])
    schedule = property(lambda self: self.meta["schedule"])
    protocol_id = property(lambda self: self.meta["protocol_id"])
    lanes = property(lambda self: self.meta["lanes"])

    @classmethod
    def fit(
        cls,
        table: pd.DataFrame,
        device: str,
        schedule: str = "default",
        protocol_id: str | None = None,
        source: str = "table",
        evaluate: bool = True,
        seed: int = 0,
        models: pd.DataFrame | None = None,
        train: Callable[[pd.DataFrame, int], LatencyModel] = LatencyModel.train,
    ) -> "Predictor":
        """Train on ``device``'s successful ``schedule`` rows of ``table`` (one protocol and target),
        with ``train`` (rows, seed → latency model; :meth:`LatencyModel.train` by default).

        ``meta["trust"]`` says how far the rows can be trusted (:func:`hwloop.trust.agreement`).
        With ``evaluate``, the metadata also holds held-out scores (by config, unseen channel counts, unseen
        shapes) from models
        trained without those rows. ``models`` (the device's model table) calibrates whole-model
        predictions.
        """
        schedule = rows_name(schedule)
        chosen = select(table, source, schedule, protocol_id, device)
        lanes, registers = vector_unit(chosen.target)
        meta = {
            "format_version": FORMAT_VERSION,
            "device": device,
            "schedule": schedule,
            "protocol_id": chosen.protocol_id,
            "protocol": chosen.protocol,
            "target": chosen.target,
            "lanes": lanes,
            "registers": registers,
            "features": features.names(lanes),
            "rows": len(chosen.rows),
            "table_sha256": table_hash(chosen.rows),
            "xgboost_version": xgb.__version__,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "trust": agreement(chosen.passes),
            "metrics": {},
            "calibration": None,
        }
        if evaluate:
            meta["metrics"] = holdout_scores(chosen.rows, seed, train)
        model = train(chosen.rows, seed)
        predictor = cls(model, {**meta, "work": model.work})
        if models is not None:
            predictor.meta["calibration"] = calibrate(predictor, models)
        return predictor

    def predict(self, configs) -> np.ndarray:
        """Latency in ms of each config (a list of LayerConfig)."""
        return self.model.predict(configs)

    def predict_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Latency in ms of each row of a frame with the config columns (a table, say)."""
        return self.model.predict_frame(frame)

    def predict_columns(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Latency in ms from config columns as arrays: the fast path for large batches (each
        distinct config is predicted once)."""
        return self.model.predict_columns(cols)

    def latency_grid(self, config, in_counts, out_counts) -> np.ndarray:
        """Latency (ms) of ``config`` with every in/out channel count pair, shape ``(len(in), len(out))``.

        A depthwise layer's groups follow its in_channels. Results are cached; the array is read-only.
        """
        key = (config, tuple(int(c) for c in in_counts), tuple(int(c) for c in out_counts))
        if key not in self._grids:
            cin, cout = np.meshgrid(
                np.asarray(key[1], dtype=np.int64), np.asarray(key[2], dtype=np.int64), indexing="ij"
            )
            n = cin.size
            cols = {c: np.full(n, getattr(config, c)) for c in features.COLUMNS}
            cols["in_channels"], cols["out_channels"] = cin.ravel(), cout.ravel()
            if config.op == "depthwise_conv2d":
                cols["groups"] = cin.ravel()
            grid = self.predict_columns(cols).reshape(cin.shape)
            grid.flags.writeable = False
            self._grids[key] = grid
        return self._grids[key]

    def predict_model(self, layers) -> float:
        """Whole-model latency (ms): the sum of its conv/linear layers, scaled and offset by the
        calibration on measured whole models (the rest: element-wise ops, pooling, glue, and
        weights read from memory)."""
        layers = list(layers)
        total = float(self.predict(layers).sum())
        calibration = self.meta.get("calibration") or {"scale": 1.0, "offset_ms": 0.0}
        return float(predicted(calibration, total, weights_mib(layers)))

    def save(self, predictors_dir: Path) -> Path:
        """Write ``<predictors_dir>/<device>/``; each file is replaced atomically."""
        directory = Path(predictors_dir) / self.device
        directory.mkdir(parents=True, exist_ok=True)
        raw = bytes(self.model.booster.save_raw("ubj"))
        meta = {**self.meta, "booster_sha256": hashlib.sha256(raw).hexdigest()}
        _write_atomic(directory / BOOSTER_FILE, raw)
        _write_atomic(directory / META_FILE, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
        self.meta = meta
        return directory

    @classmethod
    def load(cls, device: str, predictors_dir: Path = Path("predictors"), schedule: str | None = None) -> "Predictor":
        """The saved predictor of ``device``; refused if missing, corrupt, newer, or made for another
        device or (when given) another schedule policy."""
        directory = Path(predictors_dir) / device
        meta_path, booster_path = directory / META_FILE, directory / BOOSTER_FILE
        if not meta_path.is_file():
            raise PredictorError(
                f"{meta_path}: no predictor for device {device!r}; train one with `hwloop fit --device {device}`"
            )
        meta = _read_meta(meta_path)
        if meta["device"] != device:
            raise PredictorError(
                f"{meta_path}: field 'device': the predictor is for {meta['device']!r}, not {device!r}"
            )
        if schedule is not None and meta["schedule"] != (wanted := rows_name(schedule)):
            raise PredictorError(
                f"{meta_path}: field 'schedule': trained on {meta['schedule']!r} rows, "
                f"not {wanted!r}; fit one with --schedule {schedule}"
            )
        if meta["features"] != features.names(meta["lanes"]):
            raise PredictorError(
                f"{meta_path}: field 'features': made by an hwloop with other features; "
                f"fit it again with `hwloop fit --device {device}`"
            )
        terms = len(TERMS) + 1
        if not isinstance(meta["work"], dict) or any(len(c) != terms for c in meta["work"].values()):
            raise PredictorError(
                f"{meta_path}: field 'work': not {terms} coefficients a path (made by an hwloop with another "
                f"work model); fit it again with `hwloop fit --device {device}`"
            )
        try:
            raw = booster_path.read_bytes()
        except OSError as exc:
            raise PredictorError(f"{booster_path}: cannot read the booster: {exc.strerror or exc}") from None
        if hashlib.sha256(raw).hexdigest() != meta["booster_sha256"]:
            raise PredictorError(
                f"{booster_path}: corrupt (its checksum differs from predictor.json's "
                f"'booster_sha256'); fit it again with `hwloop fit --device {device}`"
            )
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(raw))
        except xgb.core.XGBoostError as exc:
            raise PredictorError(f"{booster_path}: not a readable XGBoost model ({str(exc).splitlines()[0]})") from None
        if booster.num_features() != len(meta["features"]):
            raise PredictorError(
                f"{booster_path}: {booster.num_features()} features, predictor.json lists {len(meta['features'])}"
            )
        return cls(LatencyModel(booster, meta["lanes"], meta["registers"], meta["work"]), meta)


def rows_name(schedule: str) -> str:
    """How rows name the schedule policy ``schedule`` (``default`` is its current revision, ``default@11``)."""
    try:
        return parse_policy(schedule).name
    except PolicyError as exc:
        raise PredictorError(str(exc)) from None


def table_hash(rows: pd.DataFrame) -> str:
    """Identifies the measurements a predictor learned from (their ids and latencies)."""
    keyed = rows.sort_values("measurement_id")
    text = "\n".join(f"{m}:{latency!r}" for m, latency in zip(keyed.measurement_id, keyed.latency_ms))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictorError(f"{path}: not a readable predictor file ({exc})") from None
    if not isinstance(meta, dict):
        raise PredictorError(f"{path}: expected a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise PredictorError(f"{path}: field 'format_version': missing or not an integer")
    if version > FORMAT_VERSION:
        raise PredictorError(
            f"{path}: field 'format_version': {version} was written by a newer hwloop "
            f"(this one reads up to {FORMAT_VERSION}); upgrade hwloop or fit it again"
        )
    if version < FORMAT_VERSION:
        raise PredictorError(
            f"{path}: field 'format_version': {version} was written by an earlier hwloop, whose "
            f"predictors this one does not read; fit it again with `hwloop fit`"
        )
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise PredictorError(f"{path}: field {missing[0]!r}: missing")
    return meta


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
