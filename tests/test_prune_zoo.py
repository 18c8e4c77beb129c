"""torchvision's classifiers (random weights, small inputs): their channel groups, the dry run's
check against the dense model, their layers as the predictor sees them, and a pruning run."""

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hwloop.cli import app
from hwloop.layers import LayerConfig
from hwloop.models import ModelError, file_sha256, load_model, torchvision_classifiers
from hwloop.prune import export, pipeline
from hwloop.prune.coverage import uncovered
from hwloop.prune.data import DataError, load_data
from hwloop.prune.dryrun import dry_run
from hwloop.prune.groups import ChannelGroups, PruneError
from hwloop.prune.importance import CRITERIA, scores
from hwloop.tracing import trace_layers

runner = CliRunner()
SHAPE = (1, 3, 32, 32)


def tv(name: str, shape=SHAPE, classes: int = 10):
    return load_model(f"torchvision:{name}", shape, classes)


def test_torchvision_classifiers_load_with_random_weights():
    assert {"resnet50", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x1_0"} <= set(
        torchvision_classifiers()
    )
    model, shape = tv("mobilenet_v3_small")
    assert shape == SHAPE and not model.training
    with torch.no_grad():
        assert model(torch.zeros(shape)).shape == (1, 10)
    with pytest.raises(ModelError, match=r"torchvision:resnet18: input shape \(1, 1, 28, 28\): .* 3-channel"):
        load_model("torchvision:resnet18", (1, 1, 28, 28))
    with pytest.raises(ModelError, match="torchvision:resnet7: not one of torchvision's classifiers"):
        load_model("torchvision:resnet7")


# models whose every channel flows through the layers that consume it: the pruned model must compute
# exactly what the dense one computes with the dropped channels zeroed at their consumers
EXACT = ["squeezenet1_1", "shufflenet_v2_x0_5", "regnet_x_400mf", "mobilenet_v3_small", "efficientnet_b0", "googlenet"]


@pytest.mark.parametrize("name", EXACT)
def test_dry_run_prunes_to_what_the_dense_model_computes_without_those_channels(name):
    model, shape = tv(name)
    checked = dry_run(model, shape)
    assert checked.shapes_hold and checked.dense_shape == (1, 10)
    assert checked.difference < 1e-4
    assert len(checked.groups.groups) > 10


def test_inception_v3_prunes_through_its_kernels_that_are_not_square():
    model, shape = tv("inception_v3", (1, 3, 80, 80))
    kernels = {(t.config.kernel, t.config.kernel_w) for t in trace_layers(model, shape)}
    assert {(1, 7), (7, 1), (1, 3), (3, 1)} <= kernels
    checked = dry_run(model, shape)
    assert checked.shapes_hold and checked.dense_shape == (1, 10) and checked.difference < 1e-4


def test_output_layer_stays_dense_whatever_its_kind():
    groups = ChannelGroups(tv("squeezenet1_1")[0], SHAPE)
    (output,) = [s for s in groups.skipped if s.name == "classifier.1"]
    assert "output" in output.reason and "classifier.1" not in groups.by_name


def test_channel_shuffle_groups_stay_dense_and_the_branches_prune():
    groups = ChannelGroups(tv("shufflenet_v2_x0_5")[0], SHAPE)
    assert any("mixes channels" in s.reason for s in groups.skipped)
    # a branch's inner width: 1x1 conv, depthwise, 1x1 conv
    inner = next(g for g in groups.groups if "stage2.1.branch2.0" in g.producers)
    assert inner.producers == ["stage2.1.branch2.0"] and list(inner.depthwise) == ["stage2.1.branch2.3"]
    assert list(inner.consumers) == ["stage2.1.branch2.5"]


def test_grouped_convs_prune_alike_in_every_group_and_stay_grouped():
    model, shape = tv("regnet_x_400mf")
    groups = ChannelGroups(model, shape)
    conv = model.trunk_output.block1[0].f.b[0]
    assert 1 < conv.groups < conv.in_channels
    feeding = next(g for g in groups.groups if "trunk_output.block1.block1-0.f.b.0" in g.consumers)
    assert feeding.unit == conv.groups and feeding.size % feeding.unit == 0
    plan = {**groups.dense, feeding.name: feeding.size // 2}
    layers = groups.layers(plan)
    index = [t.name for t in groups.traced].index("trunk_output.block1.block1-0.f.b.0")
    assert (layers[index].op, layers[index].in_channels, layers[index].groups) == (
        "conv2d",
        feeding.size // 2,
        conv.groups,
    )
    groups.apply(groups.top({g.name: torch.rand(g.size) for g in groups.groups}, plan))
    assert conv.groups == feeding.unit and conv.in_channels == feeding.size // 2
    assert [t.config for t in trace_layers(model, shape)] == layers


def test_a_linear_on_channels_last_tensors_is_a_matrix_product_with_a_row_per_position():
    model, shape = tv("convnext_tiny")
    traced = {t.name: t.config for t in trace_layers(model, shape)}
    first = traced["features.1.0.block.3"]  # after the 4x4 stem: an 8x8 map of 96 channels
    assert first == LayerConfig("linear", 96, 384, batch=8 * 8, activation="gelu")
    checked = dry_run(model, shape)  # LayerNorm normalises over the dropped channels too
    assert checked.shapes_hold and len(checked.groups.groups) > 10


def test_every_importance_criterion_scores_every_group_of_a_model_with_grouped_convs():
    groups = ChannelGroups(tv("regnet_x_400mf")[0], SHAPE)
    batches = [(torch.randn(2, *SHAPE[1:]), torch.tensor([1, 3]))]
    for criterion in CRITERIA:
        result = scores(groups, criterion, batches)
        assert all(torch.isfinite(result[g.name]).all() and len(result[g.name]) == g.size for g in groups.groups)


def test_a_pruning_run_of_a_grouped_model_exports_and_reloads(resnet20_predictor, tmp_path):
    data = load_data("fashion-mnist", 32, train_samples=96, test_samples=32, input_shape=SHAPE)
    assert data.input_shape == SHAPE
    settings = pipeline.Settings(method="latency", budget=0.8, epochs=1, dense_epochs=1)
    result = pipeline.run("torchvision:regnet_x_400mf", data, resnet20_predictor, settings, tmp_path / "out", tmp_path)
    record = result.record
    assert record["predicted_ms"] <= record["target_ms"]
    assert any(g["kept"] < g["dense"] for g in record["groups"].values())
    pruned, _, reloaded = export.load(tmp_path / "out")
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert torch.allclose(pruned(x), result.model(x), atol=1e-5)
    assert reloaded["model"] == "torchvision:regnet_x_400mf"


def test_an_input_too_small_for_the_model_is_refused_before_training():
    data = load_data("fashion-mnist", 8, train_samples=8, test_samples=8, input_shape=SHAPE)
    with pytest.raises(PruneError, match=r"inception_v3: input shape \(1, 3, 32, 32\): running the model raised"):
        pipeline.build("torchvision:inception_v3", data)


def test_a_changed_model_file_is_refused_before_it_runs(tmp_path):
    file = tmp_path / "net.py"
    file.write_text(
        "from torch import nn\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),"
        " nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
    )
    spec = f"{file}:build"
    model, shape = load_model(spec, (1, 3, 8, 8))
    record = {
        "model": spec,
        "model_sha256": file_sha256(file),
        "input_shape": [1, 3, 8, 8],
        "num_classes": 2,
        "groups": {"0": {"dense": 8, "kept": 8}, "2": {"dense": 4, "kept": 4}},
    }
    export.save(tmp_path / "out", model, model, record)
    export.load(tmp_path / "out")
    file.write_text(file.read_text() + "raise SystemExit('ran')\n")
    with pytest.raises(PruneError, match=rf"plan.json: model_sha256: {file} has changed since the plan was made"):
        export.load(tmp_path / "out")


def test_datasets_from_folders_and_arrays_resized_to_the_input_shape(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
                    tmp_path / "images" / split / label / f"{i}.png"
                )
    data = load_data(f"folder:{tmp_path / 'images'}", 4, input_shape=(1, 3, 16, 16))
    assert data.input_shape == (1, 3, 16, 16) and data.num_classes == 2
    assert len(data.train.dataset) == 12 and len(data.test.dataset) == 4
    np.savez(
        tmp_path / "arrays.npz",
        x_train=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8),
        y_train=np.arange(8) % 3,
        x_test=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
        y_test=np.arange(4) % 3,
    )
    data = load_data(f"npz:{tmp_path / 'arrays.npz'}", 4, input_shape=(1, 3, 20, 20))
    assert data.input_shape == (1, 3, 20, 20) and data.num_classes == 3
    images = data.train.dataset.tensors[0]
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated to 3 channels
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2, dtype=int))
    with pytest.raises(DataError, match=r"bad.npz: x_test: missing"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(DataError, match=r"images/train/train: no such folder"):
        load_data(f"folder:{tmp_path / 'images' / 'train'}")


def test_coverage_names_the_shapes_no_row_has():
    layers = [
        LayerConfig("conv2d", 3, 8, 32, 32, kernel=3, padding=1),
        LayerConfig("conv2d", 8, 8, 32, 32, kernel=3, padding=1),
        LayerConfig("conv2d", 8, 8, 16, 16, kernel=3, padding=1, groups=4),
        LayerConfig("linear", 8, 10),
        LayerConfig("conv2d", 8, 8, 32, 32, kernel=1, kernel_w=3, padding=0, padding_w=1),
    ]
    rows = pd.DataFrame(
        [
            {
                **LayerConfig("conv2d", 5, 7, 32, 32, kernel=3, padding=1).to_dict(),
                "status": "ok",
                "schedule": "default@2",
            },
            {**LayerConfig("linear", 16, 10).to_dict(), "status": "failed", "schedule": "default@2"},
        ]
    )
    for table in (rows, rows.drop(columns=["kernel_w", "padding_w"])):  # rows written before kernel widths
        missing, shapes = uncovered(layers, table, "default@2")
        assert shapes == 4 and [c.op for c in missing] == ["conv2d", "linear", "conv2d"]
        assert missing[0].groups == 4 and missing[2].kernel_w == 3


def test_dry_run_from_the_command_line_needs_no_data(tmp_path):
    result = runner.invoke(
        app,
        ["prune", "-d", "local", "-m", "torchvision:squeezenet1_1", "--input-shape", "1,3,32,32", "--dry-run"],
        env={"COLUMNS": "200", "HWLOOP_FASHION_MNIST": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "kept dense: classifier.1 (1000 channels): its channels are the model's output" in text
    assert "output (1, 1000) like the dense model's" in text and "computes what the dense one does" in text


def test_prune_refuses_a_model_whose_layer_shapes_the_table_lacks(local_predictor, local_table, tmp_path):
    predictors = tmp_path / "predictors"
    local_predictor.save(predictors)
    result = runner.invoke(
        app,
        [
            "prune",
            "-d",
            "local",
            "-m",
            "torchvision:squeezenet1_1",
            "--input-shape",
            "1,3,32,32",
            "--predictors",
            str(predictors),
            "--tables",
            str(local_table),
            "--train-samples",
            "32",
            "--test-samples",
            "16",
        ],
        env={"COLUMNS": "300"},
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "holds none of the layer shapes of torchvision:squeezenet1_1" in text
    assert "hwloop collect -d local -m torchvision:squeezenet1_1 --input-shape 1,3,32,32" in text
