import json
import shutil

import pytest
from typer.testing import CliRunner

from hwloop import tables
from hwloop.cli import app
from hwloop.layers import LayerConfig

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    """The error output with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def test_fit_refuses_a_table_whose_trials_disagree(local_table, tmp_path):
    rows = tables.read(local_table, "local", where={"status": "ok"})
    noisy = rows.assign(trial_latencies_ms=[[latency, 1.3 * latency] for latency in rows.latency_ms])
    tables.append(tmp_path / "noisy", "local", noisy.astype(object).where(noisy.notna(), None).to_dict("records"))
    predictors = tmp_path / "predictors"
    refused = invoke("fit", "--device", "local", "--tables", tmp_path / "noisy", "--predictors", predictors)
    assert refused.exit_code != 0 and "too noisy" in said(refused) and not (predictors / "local").exists()
    accepted = invoke(
        "fit", "--device", "local", "--tables", tmp_path / "noisy", "--predictors", predictors, "--accept-noisy"
    )
    assert accepted.exit_code == 0 and (predictors / "local" / "predictor.json").is_file()


def test_retakes_whose_trials_agree_stand_for_measurements_whose_trials_did_not(local_table, tmp_path):
    rows = tables.read(local_table, "local", where={"status": "ok"})
    noisy = rows.assign(trial_latencies_ms=[[latency, 1.3 * latency] for latency in rows.latency_ms])
    retaken = rows.assign(
        trial_latencies_ms=[[latency, latency] for latency in rows.latency_ms],
        measurement_id=[tables.new_measurement_id() for _ in range(len(rows))],
    )

    def shown() -> float:
        record = json.loads(invoke("tables", "show", "local", "--tables", tmp_path, "--json").stdout)
        return min(r["trials"]["within_10"] for r in record)

    tables.append(tmp_path, "local", noisy.astype(object).where(noisy.notna(), None).to_dict("records"))
    assert shown() == 0.0
    tables.append(tmp_path, "local", retaken.astype(object).where(retaken.notna(), None).to_dict("records"))
    assert shown() == 1.0
    fitted = invoke("fit", "--device", "local", "--tables", tmp_path, "--predictors", tmp_path / "p", "--json")
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(fitted.stdout)["trust"]["within_10"] == 1.0


def test_fit_evaluate_predict(local_table, tmp_path):
    predictors = tmp_path / "predictors"
    # the test protocol's two trials are not checked for a busy machine: whether they agree is not the point here
    fitted = invoke(
        "fit", "--device", "local", "--tables", local_table, "--predictors", predictors, "--json", "--accept-noisy"
    )
    assert fitted.exit_code == 0, fitted.output
    record = json.loads(fitted.stdout)
    assert record["rows"] > 50 and set(record["metrics"]) >= {"config", "unseen_channels"}
    assert (predictors / "local" / "predictor.json").is_file()

    scored = invoke(
        "evaluate", "--device", "local", "--predictors", predictors, "--table", local_table / "local", "--json"
    )
    assert scored.exit_code == 0, scored.output
    report = json.loads(scored.stdout)
    for key in ("within_5", "within_10", "within_15", "mape", "spearman"):
        assert 0 <= report[key] <= 1, key
    assert report["within_5"] <= report["within_10"] <= report["within_15"] and report["rmse_ms"] >= 0
    assert set(report["ops"]) == {"conv2d", "depthwise_conv2d", "linear"} and report["noise"]["mape"] >= 0

    ids = ["conv2d:1x16x16x16:o16:k3s1p1g1:float32", "linear:1x64:o10"]
    predicted = invoke("predict", "--device", "local", "--predictors", predictors, *ids, "--json")
    assert predicted.exit_code == 0, predicted.output
    layers = json.loads(predicted.stdout)["layers"]
    assert [row["config_id"] for row in layers] == [ids[0], "linear:1x64:o10:k1s1p0g1:float32"]
    assert all(row["latency_ms"] > 0 for row in layers)

    bad = invoke("predict", "--device", "local", "--predictors", predictors, "conv2d:1x16:o4")
    assert bad.exit_code == 2 and "conv2d:1x16:o4" in said(bad) and "NxCxHxW" in said(bad)


def test_evaluate_refuses_what_it_cannot_score(local_predictor, untuned_dir, tmp_path):
    local_predictor.save(tmp_path)
    other = invoke("evaluate", "--device", "local", "--predictors", tmp_path, "--table", untuned_dir / "local")
    assert other.exit_code == 2 and "no rows of schedule policy 'default@" in said(other)
    missing = invoke("evaluate", "--device", "pi", "--predictors", tmp_path)
    assert missing.exit_code == 2 and "no predictor for device 'pi'" in said(missing)
    (tmp_path / "junk.parquet").write_text("not parquet")
    junk = invoke("evaluate", "--device", "local", "--predictors", tmp_path, "--table", tmp_path / "junk.parquet")
    assert junk.exit_code == 2 and "junk.parquet: not a readable Parquet table" in said(junk)


def test_report_writes_a_page_and_its_plots(local_predictor, local_table, tmp_path):
    local_predictor.save(tmp_path / "predictors")
    tables_dir = tmp_path / "tables"
    shutil.copytree(local_table, tables_dir)
    result = invoke(
        "report",
        "--device",
        "local",
        "--tables",
        tables_dir,
        "--predictors",
        tmp_path / "predictors",
        "--out",
        tmp_path / "report",
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    for name in ("scatter.png", "staircase.png", "learning_curve.png", "trials.png"):
        assert name in page
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_a_whole_model(local_predictor, tmp_path):
    local_predictor.save(tmp_path)
    result = invoke("predict", "--device", "local", "--predictors", tmp_path, "--model", "resnet20", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert len(record["layers"]) == 22 and not record["calibrated"]  # 19 convs, 2 shortcuts, the classifier
    assert record["model_ms"] == record["layers_ms"] == pytest.approx(sum(r["latency_ms"] for r in record["layers"]))


def test_predict_names_the_layers_on_a_path_no_row_took(local_table, tmp_path):
    from hwloop.predictor import Predictor

    rows = tables.read(local_table, "local")
    Predictor.fit(rows[rows.op != "depthwise_conv2d"], "local", evaluate=False).save(tmp_path)
    depthwise = LayerConfig("depthwise_conv2d", 20, 20, 16, 16, kernel=3, padding=1, groups=20)
    ids = ["conv2d:1x16x16x16:o16:k3s1p1g1:float32", depthwise.id]
    result = invoke("predict", "--device", "local", "--predictors", tmp_path, *ids, "--json")
    assert result.exit_code == 0, result.output
    assert [row.get("unlearnt_path") for row in json.loads(result.stdout)["layers"]] == [None, "width"]
    plain = invoke("predict", "--device", "local", "--predictors", tmp_path, *ids)
    assert plain.exit_code == 0, plain.output
    note = "1 of the 2 layers take a path of the rules that no row of local's table took (width: 1), such as"
    assert f"{note} {depthwise.id}" in said(plain)


def test_config_ids_parse_back_to_their_configs():
    configs = [
        LayerConfig("conv2d", 16, 32, 32, 32, kernel=3, padding=1),
        LayerConfig("linear", 64, 10),
        LayerConfig("depthwise_conv2d", 8, 8, 9, 9, kernel=3, stride=2, padding=1, groups=8, batch=2, dtype="float16"),
    ]
    assert [LayerConfig.from_id(c.id) for c in configs] == configs
    assert LayerConfig.from_id("linear:1x512:o10") == LayerConfig("linear", 512, 10)
    with pytest.raises(ValueError, match="groups: 3 must divide"):
        LayerConfig.from_id("conv2d:1x4x8x8:o4:k3s1p1g3")
