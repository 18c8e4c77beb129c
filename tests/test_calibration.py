import json

import numpy as np
import pandas as pd
import pytest
from conftest import small_cnn

from hwloop import tables
from hwloop.endtoend import ModelCase, measure_models
from hwloop.layers import LayerConfig
from hwloop.predictor import Predictor
from hwloop.predictor.calibration import calibrate, fit_line, fit_spill, predicted, weights_mib
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy


@pytest.fixture(scope="module")
def model_table(registry_dir, cache_dir, local_table, tmp_path_factory):
    """``local_table`` plus the model table of a small CNN measured end to end at three widths."""
    directory = tmp_path_factory.mktemp("with-models")
    (directory / "local").symlink_to(local_table / "local", target_is_directory=True)
    cases = [ModelCase(f"cnn{c}", small_cnn(c), (1, 16, 16, 16)) for c in (8, 13, 16)]
    device = load_registry(registry_dir).get("local")
    rows = measure_models(device, cases, parse_policy("default"), directory, cache_dir)
    assert all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
    return directory


def test_whole_model_prediction_is_calibrated_on_measured_models(model_table):
    models = tables.read_models(model_table, "local")
    predictor = Predictor.fit(tables.read(model_table, "local"), "local", evaluate=False, models=models)
    calibration = predictor.meta["calibration"]
    assert calibration["rows"] == 3 and calibration["models"] == ["cnn13", "cnn16", "cnn8"]
    assert calibration["scale"] > 0 and calibration["offset_ms"] >= 0
    assert all(np.isfinite(case["error"]) for case in calibration["cases"])

    measured, raw, calibrated = [], [], []
    for row in models.itertuples():
        layers = [LayerConfig.from_dict(d) for d in json.loads(row.layers)]
        measured.append(row.latency_ms)
        raw.append(predictor.predict(layers).sum())
        calibrated.append(predictor.predict_model(layers))
    measured, raw, calibrated = map(np.asarray, (measured, raw, calibrated))
    assert np.allclose(calibrated, calibration["scale"] * raw + calibration["offset_ms"])
    assert np.sum((calibrated / measured - 1) ** 2) <= np.sum((raw / measured - 1) ** 2) + 1e-12


def test_calibration_serves_small_models_as_well_as_the_dense_one():
    """Pruned models run up to tens of times faster than the dense one; the fit weighs their
    relative errors alike, where a least-squares fit in ms would follow the dense model alone."""
    layers = np.array([0.03, 0.14, 0.97, 2.67, 8.34])
    measured = np.array([0.046, 0.210, 1.59, 3.19, 8.63])
    scale, offset = fit_line(layers, measured)
    relative = np.abs((scale * layers + offset) / measured - 1)
    assert relative.max() < 0.3
    absolute_scale, absolute_offset = np.polyfit(layers, measured, 1)
    assert abs((absolute_scale * layers[0] + absolute_offset) / measured[0] - 1) > 1


def test_weights_that_outgrow_the_cache_cost_time_per_mib():
    """Thinned copies of a model: those whose weights outgrow the cache run slower than their
    layers' sum says, by a time per MiB of the weights that miss, a share rising with the weights;
    the line alone misses both ends, the spill fits them."""
    layers = np.array([0.19, 0.45, 0.71, 1.05, 1.52, 3.56])
    weights = np.array([2.7, 6.8, 10.7, 16.0, 24.0, 42.6])
    share = np.clip((weights - 6.8) / (24.0 - 6.8), 0, 1)
    measured = 1.06 * layers + 0.01 + 0.042 * weights * share
    line = fit_spill(layers, weights, measured)
    assert (line["spill_from_mib"], line["spill_to_mib"]) == (6.8, 24.0)
    assert line["spill_ms_per_mib"] == pytest.approx(0.042, rel=1e-3)
    assert predicted(line, layers, weights) == pytest.approx(measured, rel=1e-3)
    scale, offset = fit_line(layers, measured)
    assert np.abs((scale * layers + offset) / measured - 1).max() > 0.1

    on_a_line = fit_spill(layers, weights, 1.1 * layers + 0.02)
    assert on_a_line["spill_from_mib"] is None and on_a_line["spill_ms_per_mib"] == 0
    three = [0, 2, 5]
    assert fit_spill(layers[three], weights[three], measured[three])["spill_from_mib"] is None


def test_a_whole_model_prediction_adds_the_spill_of_its_weights(local_predictor):
    small = [LayerConfig("conv2d", 16, 16, 16, 16, kernel=3, padding=1)]
    large = [LayerConfig("conv2d", 512, 512, 2, 2, kernel=3, padding=1)]
    assert weights_mib(large) == pytest.approx(512 * 512 * 9 * 4 / 2**20)
    fit = {"scale": 1.0, "offset_ms": 0.0, "spill_ms_per_mib": 0.05, "spill_from_mib": 1.0, "spill_to_mib": 2.0}
    spilling = Predictor(local_predictor.model, {**local_predictor.meta, "calibration": fit})
    for layers, spill in ((small, 0.0), (large, 0.05 * weights_mib(large))):
        assert spilling.predict_model(layers) == pytest.approx(local_predictor.predict(layers).sum() + spill)


def test_without_model_rows_the_layers_are_summed(local_table, local_predictor):
    layers = [LayerConfig("conv2d", 16, 16, 16, 16, kernel=3, padding=1), LayerConfig("linear", 64, 10)]
    assert local_predictor.meta["calibration"] is None
    assert local_predictor.predict_model(layers) == pytest.approx(local_predictor.predict(layers).sum())


def test_a_model_timed_on_a_busy_device_is_left_out(model_table):
    models = tables.read_models(model_table, "local")
    busy = models.assign(
        latency_ms=models.latency_ms * 0.5, quiet=False, measurement_id=models.measurement_id + "-busy"
    )
    predictor = Predictor.fit(tables.read(model_table, "local"), "local", evaluate=False)
    once, beside = (calibrate(predictor, frame) for frame in (models, pd.concat([models, busy], ignore_index=True)))
    assert (beside["scale"], beside["offset_ms"]) == pytest.approx((once["scale"], once["offset_ms"]))


def test_a_model_measured_in_several_passes_counts_by_its_fastest(model_table):
    models = tables.read_models(model_table, "local")
    slower = models.assign(latency_ms=models.latency_ms * 3, measurement_id=models.measurement_id + "-2")
    predictor = Predictor.fit(tables.read(model_table, "local"), "local", evaluate=False)
    once, twice = (calibrate(predictor, frame) for frame in (models, pd.concat([slower, models], ignore_index=True)))
    assert twice["rows"] == 3
    assert (twice["scale"], twice["offset_ms"]) == pytest.approx((once["scale"], once["offset_ms"]))
