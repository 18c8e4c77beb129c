import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_REGISTRY, small_cnn
from typer.testing import CliRunner

from hwloop import tables
from hwloop.cli import app
from hwloop.endtoend import ModelCase, measure_models
from hwloop.layers import LayerConfig
from hwloop.predictor import Predictor
from hwloop.predictor.calibration import scaled, transferred
from hwloop.predictor.features import shape_key
from hwloop.predictor.fewshot import OWN_ROWS, choose, fit, retarget, transfer, transfer_from
from hwloop.predictor.latency import fit_work, vector_unit
from hwloop.predictor.sampling import at_step, frame_of, transfer_design
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

TARGET = "local-sse4.2"
SPACE = """\
layers:
  - {op: conv2d, in_channels: 16, out_channels: {start: 4, stop: 49, step: 1}, input_hw: 16, kernel: 3, padding: 1}
  - {op: conv2d, in_channels: 32, out_channels: {start: 8, stop: 65, step: 1}, input_h: 8, input_w: 8, kernel: 1}
  - {op: linear, in_channels: 64, out_channels: {start: 10, stop: 101, step: 1}}
"""
SPACE_CONFIGS = (
    [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(4, 49)]
    + [LayerConfig("conv2d", 32, c, 8, 8, kernel=1) for c in range(8, 65)]
    + [LayerConfig("linear", 64, c) for c in range(10, 101)]
)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The fast registry, plus its ``local`` device with AVX switched off (SSE4.2 code: 4 float32 lanes)."""
    directory = tmp_path_factory.mktemp("fewshot-registry")
    sse = (
        FAST_REGISTRY.split("\n  broken-cc:")[0]
        .split("  local:\n", 1)[1]
        .replace("target: {kind: llvm, mcpu: host}", "target: {kind: llvm, mcpu: host, mattr: [-avx, -avx2, -avx512f]}")
    )
    (directory / "devices.yaml").write_text(FAST_REGISTRY + f"  {TARGET}:\n" + sse)
    return directory


@pytest.fixture(scope="module")
def source_predictors(local_predictor, tmp_path_factory):
    directory = tmp_path_factory.mktemp("predictors")
    local_predictor.save(directory)
    return directory


@pytest.fixture(scope="module")
def chosen(registry, source_predictors, cache_dir, tmp_path_factory):
    """``collect --adaptive --budget 14 --from local`` on the SSE4.2 device: its tables folder and the CLI's record."""
    folder = tmp_path_factory.mktemp("fewshot")
    (folder / "space.yaml").write_text(SPACE)
    result = invoke(
        "collect",
        "-d",
        TARGET,
        "--space",
        folder / "space.yaml",
        "--adaptive",
        "--budget",
        14,
        "--from",
        "local",
        "--predictors",
        source_predictors,
        "--registry",
        registry,
        "--tables",
        folder / "tables",
        "--cache",
        cache_dir,
        "--json",
    )
    assert result.exit_code == 0, result.output
    return folder / "tables", json.loads(result.stdout)


def ends(pool: pd.DataFrame, model) -> set[str]:
    """The config ids of each shape's slowest and fastest config of ``pool``, as ``model`` predicts them."""
    predicted = pool.assign(_p=model.predict_frame(pool), _s=shape_key(pool))
    return set(predicted.loc[predicted.groupby("_s")._p.idxmax()].config_id) | set(
        predicted.loc[predicted.groupby("_s")._p.idxmin()].config_id
    )


def test_collect_from_a_source_measures_both_ends_of_each_shape(chosen, local_predictor):
    tables_dir, record = chosen
    table = tables.read(tables_dir, TARGET)
    assert record["measured"] + record["failed"] == 14 == len(table) and table.config_id.is_unique
    assert vector_unit(table.target.iloc[0]) == (4, 16)  # the registry's mattr, whatever this machine has
    assert ends(frame_of(SPACE_CONFIGS), retarget(local_predictor.model, 4, 16)) <= set(table.config_id)


def test_fit_from_a_source_records_it_and_loads_as_any_predictor(
    chosen, registry, source_predictors, local_predictor, tmp_path
):
    tables_dir, _ = chosen
    predictors = tmp_path / "predictors"
    predictors.mkdir()
    (predictors / "local").symlink_to(source_predictors / "local", target_is_directory=True)
    # a table of 14 rows timed beside other work: its trust is not the point here
    fitted = invoke(
        "fit",
        "-d",
        TARGET,
        "--from",
        "local",
        "--tables",
        tables_dir,
        "--predictors",
        predictors,
        "--json",
        "--accept-noisy",
    )
    assert fitted.exit_code == 0, fitted.output
    record = json.loads(fitted.stdout)
    transfer_record = record["transfer"]
    candidates = {"transfer from local", "own trees on local's work model"}
    assert set(transfer_record["fold_errors"]) == candidates and record["metrics"]["config"]["rows"] >= 1
    best = min(transfer_record["fold_errors"], key=transfer_record["fold_errors"].get)
    assert transfer_record["source"] == "local"
    assert transfer_record["method"] == ("transfer" if best.startswith("transfer") else "own trees")
    meta = json.loads((predictors / TARGET / "predictor.json").read_text())
    (source,) = meta["transfer"]["sources"]
    assert source["booster_sha256"] == local_predictor.meta["booster_sha256"]
    assert source["table_sha256"] == local_predictor.meta["table_sha256"] and meta["lanes"] == 4
    loaded = Predictor.load(TARGET, predictors)
    layers = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in (20, 21)]
    assert (loaded.predict(layers) > 0).all()

    for name, message in (("pi4", "no predictor for device 'pi4'"), (TARGET, "cannot be its own source")):
        refused = invoke("fit", "-d", TARGET, "--from", name, "--tables", tables_dir, "--predictors", predictors)
        assert refused.exit_code == 2 and message in said(refused)
    alone = invoke("collect", "-d", TARGET, "--space", tables_dir / "x.yaml", "--from", "local", "--registry", registry)
    assert alone.exit_code == 2 and "--adaptive" in said(alone)


def target_rows(source, configs: list[LayerConfig], lanes: int, registers: int, scale: float) -> pd.DataFrame:
    """Rows of a device whose target has ``lanes`` and ``registers`` and that runs the source's
    retargeted prediction ``scale`` times slower, exactly."""
    frame = frame_of(configs)
    target = json.dumps({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"})
    assert vector_unit(target) == (lanes, registers)
    latency = scale * retarget(source, lanes, registers).predict_frame(frame)
    return frame.assign(latency_ms=latency, latency_cv=0.0, target=target)


def test_a_device_slower_by_a_factor_is_predicted_slower_by_it(local_predictor):
    source = local_predictor.model
    configs = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(4, 49, 3)]
    rows = target_rows(source, configs, 4, 16, scale=2.5)
    model = transfer(source, rows.iloc[::2])
    assert model.lanes == 4
    assert model.predict_frame(rows.iloc[1::2]) == pytest.approx(rows.latency_ms.iloc[1::2], rel=1e-4)


def test_the_rows_own_trees_are_chosen_when_they_predict_the_rows_better_than_a_transfer(local_predictor):
    source = local_predictor.model
    configs = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(4, 4 + 2 * OWN_ROWS)]
    scaled_rows = target_rows(source, configs, 4, 16, scale=2.5)
    assert choose([source], scaled_rows)[0] == 0
    flat = scaled_rows.assign(latency_ms=1.0)  # a device the source knows nothing of: every layer alike
    index, errors = choose([source], flat)
    assert index == 1 and errors[1] < errors[0]
    assert transfer_from([source], flat).predict_frame(flat) == pytest.approx(1.0, rel=0.01)
    assert choose([source], flat.iloc[: OWN_ROWS - 1]) == (0, [])  # too few rows for trees of their own


def test_a_work_term_no_row_uses_keeps_the_prior_and_a_used_one_follows_the_rows():
    rng = np.random.default_rng(0)
    terms = np.column_stack([rng.uniform(1, 10, 30), np.zeros(30), np.ones(30)])
    latency = 3.0 * terms[:, 0] + 1.0
    prior = np.array([1.0, 5.0, 1.0])
    alone, anchored = fit_work(terms, latency, np.ones(30)), fit_work(terms, latency, np.ones(30), prior, 1.0)
    assert alone[1] == 0.0 and anchored[1] == pytest.approx(5.0)
    assert anchored[0] == pytest.approx(3.0, rel=0.05)
    assert terms @ np.array(anchored) == pytest.approx(latency, rel=0.05)  # one row's pull against thirty
    strong = fit_work(terms, latency, np.ones(30), prior, 1e6)
    assert strong[0] == pytest.approx(1.0, rel=0.05)  # and a million rows' pull outweighs thirty rows


def test_a_cost_the_source_does_not_have_is_learnt_by_refitting_its_work_model(local_predictor):
    source = local_predictor.model
    configs = [LayerConfig("conv2d", cin, c, 16, 16, kernel=3, padding=1) for cin in (8, 32) for c in range(4, 49, 2)]
    rows = target_rows(source, configs, 4, 16, scale=1.0)
    rows = rows.assign(latency_ms=rows.latency_ms * np.where(rows.in_channels == 8, 1.5, 1.0))  # short reductions
    train, test = rows.iloc[::2], rows.iloc[1::2]
    error = {
        anchor: np.mean(
            np.abs(np.log(transfer(source, train, tree_rounds=0, anchor=anchor).predict_frame(test) / test.latency_ms))
        )
        for anchor in (None, 1.0)
    }
    assert error[1.0] < error[None] / 2


def test_trees_on_the_source_s_learn_what_the_scale_misses(local_predictor):
    source = local_predictor.model
    configs = [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(4, 34)]
    rows = target_rows(source, configs, 4, 16, scale=1.0)
    rows = rows.assign(latency_ms=rows.latency_ms * np.where(rows.out_channels % 2 == 0, 1.3, 1.0))
    scaled, corrected = transfer(source, rows, tree_rounds=0), transfer(source, rows)
    assert scaled.booster.num_boosted_rounds() == source.booster.num_boosted_rounds()
    assert corrected.booster.num_boosted_rounds() > source.booster.num_boosted_rounds()
    error = [np.mean(np.abs(np.log(m.predict_frame(rows) / rows.latency_ms))) for m in (scaled, corrected)]
    assert error[1] < error[0]


def test_design_takes_both_ends_of_each_shape_then_steps(local_predictor):
    pool = frame_of(SPACE_CONFIGS)
    prior = [retarget(local_predictor.model, 4, 16)]
    design = transfer_design(pool, 12, prior, 4, 16)
    assert len(design) == 12 and design.config_id.is_unique
    assert ends(pool, prior[0]) == set(design.config_id.iloc[:6])
    assert at_step(design.iloc[6:], 4, 16).mean() > at_step(pool, 4, 16).mean()
    assert transfer_design(pool, 3, prior, 4, 16).config_id.tolist() == design.config_id.tolist()[:3]


def test_whole_model_calibration_scales_the_source_with_a_handful_of_timings():
    source = {"scale": 1.2, "offset_ms": 0.05, "spill_ms_per_mib": 0.04, "spill_from_mib": 8.0, "spill_to_mib": 16.0}
    layers, weights = np.array([0.5, 2.0]), np.array([4.0, 40.0])
    rows = pd.DataFrame({"layers_ms": layers, "weights_mib": weights, "latency_ms": 1.5 * (1.2 * layers + 0.05)})
    rows.loc[1, "latency_ms"] += 1.5 * 0.04 * 40.0
    line = scaled(source, rows)
    assert (line["scale"], line["offset_ms"], line["spill_ms_per_mib"]) == pytest.approx((1.8, 0.075, 0.06))
    assert (line["spill_from_mib"], line["spill_to_mib"]) == (8.0, 16.0)


def test_two_whole_models_timed_on_the_new_device_calibrate_its_predictor(
    chosen, registry, source_predictors, cache_dir, local_predictor, tmp_path
):
    tables_dir = tmp_path / "tables"
    shutil.copytree(chosen[0], tables_dir)
    cases = [ModelCase(f"cnn{c}", small_cnn(c), (1, 16, 16, 16)) for c in (8, 16)]
    rows = measure_models(load_registry(registry).get(TARGET), cases, parse_policy("default"), tables_dir, cache_dir)
    assert all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
    source = Predictor(local_predictor.model, {**local_predictor.meta, "calibration": {"scale": 3.0, "offset_ms": 0.0}})
    models = tables.read_models(tables_dir, TARGET)
    predictor = fit(tables.read(tables_dir, TARGET), TARGET, [source], evaluate=False, models=models)

    calibration = predictor.meta["calibration"]
    assert calibration["method"] == "source's shape, target's scale" and calibration["models"] == ["cnn16", "cnn8"]
    assert all(np.isfinite(case["error"]) for case in calibration["cases"])
    measured = np.array([case["measured_ms"] for case in calibration["cases"]])
    layers = np.array([case["layers_ms"] for case in calibration["cases"]])
    as_is = np.abs(3.0 * layers / measured - 1)
    fitted = np.abs((calibration["scale"] * layers + calibration["offset_ms"]) / measured - 1)
    assert np.sum(fitted**2) < np.sum(as_is**2)
    assert transferred(predictor, models.iloc[:0], source.meta["calibration"])["method"] == "source"
    assert transferred(predictor, models, None)["method"] == "own"
