import json
import warnings

import pandas as pd
import pytest
import torch
import tvm
from tvm import relax, tirx

from hwloop import tables
from hwloop.endtoend import ModelCase, measure_models, model_layers, reference_io
from hwloop.graph import compile_module, relax_module
from hwloop.kernels import relative_error
from hwloop.models import ResNet, load_model
from hwloop.registry import load_registry
from hwloop.runner import MODEL_TOLERANCE
from hwloop.schedules import parse_policy

CONTRACTIONS = ("fused_conv2d", "fused_matmul", "fused_NT_matmul")  # whole models' conv and linear PrimFuncs


def calibrated(model: torch.nn.Module, input_shape) -> torch.nn.Module:
    """``model`` with batch-norm statistics taken from random inputs, so activations stay O(1) to the end."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.2, 0.2)
    model.train()
    with torch.no_grad():
        for seed in range(4):
            model(torch.randn((4, *input_shape[1:]), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def ragged_resnet() -> torch.nn.Module:
    """A ResNet-20 as a channel pruner leaves it: counts that are not multiples of any vector width."""
    return ResNet((13, 27, 45), (3, 3, 3), num_classes=10, in_channels=3, imagenet_stem=False)


MODELS = {
    "resnet20": lambda: load_model("resnet20"),
    "ragged-resnet20": lambda: (ragged_resnet(), (1, 3, 32, 32)),
    "mobilenetv2": lambda: load_model("mobilenetv2", (1, 3, 64, 64)),
}


def _scheduled(mod) -> tuple[int, int]:
    """(conv and dense PrimFuncs, how many of them the policy scheduled)."""
    funcs = [
        func
        for gvar, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(CONTRACTIONS)
    ]
    return len(funcs), sum(bool(f.attrs and f.attrs.get("tirx.is_scheduled", False)) for f in funcs)


@pytest.mark.parametrize("name", MODELS)
def test_default_policy_compiles_whole_models_that_match_torch(name, host_target, tmp_path):
    model, shape = MODELS[name]()
    model = calibrated(model, shape)
    target = tvm.target.Target(host_target)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a conv left unscheduled warns
        mod = parse_policy("default").apply(relax_module(model, shape), target, tmp_path)
    contractions, scheduled = _scheduled(mod)
    assert contractions > 0 and scheduled == contractions
    data, expected = reference_io(model, shape)
    assert float(abs(expected).max()) > 0.1 and expected.std() > 0.01
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    output = vm["main"](tvm.runtime.tensor(data, tvm.cpu())).numpy()
    assert relative_error(output, expected) <= MODEL_TOLERANCE


def test_a_linear_layer_reads_its_weight_as_stored_as_the_layer_tables_time_it():
    model, shape = load_model("resnet20")  # its classifier: 64 -> 10
    (linear,) = [
        func
        for gvar, func in relax_module(model, shape).functions_items()
        if isinstance(func, tirx.PrimFunc) and "matmul" in gvar.name_hint
    ]
    sch = tvm.s_tir.Schedule(linear)
    (product,) = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if "matmul" in sch.get(b).name_hint]
    shapes = [tuple(int(d) for d in region.source.shape) for region in sch.get(product).reads]
    assert (10, 64) in shapes and (64, 10) not in shapes


def test_epilogues_are_fused_into_the_convolutions():
    model, shape = load_model("resnet20")
    names = [
        gvar.name_hint for gvar, func in relax_module(model, shape).functions_items() if isinstance(func, tirx.PrimFunc)
    ]
    convs = [name.split("_")[2:] for name in names if name.startswith("fused_conv2d")]
    assert len(convs) >= 8
    assert all(ops[0].startswith("add") for ops in convs)  # batch norm folded into a bias
    assert any(len(ops) == 3 and ops[1].startswith("add") and ops[2].startswith("relu") for ops in convs)  # residual
    assert not any(name.startswith(("relu", "add", "batch_norm", "fused_relu", "fused_add")) for name in names)


@pytest.fixture(scope="module")
def local_device(registry_dir):
    return load_registry(registry_dir).get("local")


def test_models_are_measured_once_into_the_model_table(local_device, tmp_path):
    model, shape = load_model("resnet20")
    cases = [
        ModelCase("resnet20", calibrated(model, shape), shape),
        ModelCase("ragged-resnet20", calibrated(ragged_resnet(), shape), shape),
    ]
    rows = measure_models(local_device, cases, parse_policy("default"), tmp_path / "tables", tmp_path / "cache")
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
    assert all(r["check_error"] <= MODEL_TOLERANCE and r["latency_ms"] > 0 for r in rows)
    frame = tables.read_models(tmp_path / "tables", "local")
    assert list(frame.model) == ["resnet20", "ragged-resnet20"] and set(frame.schedule) == {
        parse_policy("default").name
    }
    layers = [json.loads(text) for text in frame.layers]
    assert [layer["out_channels"] for layer in layers[1][:2]] == [13, 13]
    assert layers[0] == model_layers(model, shape)

    again = measure_models(local_device, cases, parse_policy("default"), tmp_path / "tables", tmp_path / "cache")
    assert again == []
    assert len(tables.read_models(tmp_path / "tables", "local")) == 2

    twice = local_device.model_copy(update={"protocol": local_device.protocol.model_copy(update={"passes": 2})})
    second = measure_models(twice, cases, parse_policy("default"), tmp_path / "tables", tmp_path / "cache")
    assert [r["model"] for r in second] == ["resnet20", "ragged-resnet20"] and {r["status"] for r in second} == {"ok"}
    assert measure_models(twice, cases, parse_policy("default"), tmp_path / "tables", tmp_path / "cache") == []
    layer = {
        "measurement_id": tables.new_measurement_id(),
        "config_id": "c",
        "device": "local",
        "status": "ok",
        "latency_ms": 1.0,
        "measured_at": pd.Timestamp.now(tz="UTC"),
    }
    tables.append(tmp_path / "tables", "local", [layer])  # a layer part beside the model table
    assert list(pd.read_parquet(tmp_path / "tables" / "local").config_id) == ["c"]  # no model row among them


def test_a_model_whose_output_differs_is_a_mismatch_not_a_timing(local_device, tmp_path, monkeypatch):
    model, shape = load_model("resnet20")
    import hwloop.endtoend as endtoend

    monkeypatch.setattr(endtoend, "reference_io", lambda m, s: (lambda d, e: (d, e + 1.0))(*reference_io(m, s)))
    [row] = measure_models(
        local_device,
        [ModelCase("resnet20", calibrated(model, shape), shape)],
        parse_policy("default"),
        tmp_path / "tables",
        tmp_path / "cache",
    )
    assert row["status"] == "mismatch" and row["stage"] == "check" and not row["latencies_ms"]


def test_untuned_whole_model_matches_torch(host_target, tmp_path):
    model, shape = load_model("resnet20")
    model = calibrated(model, shape)
    target = tvm.target.Target(host_target)
    mod = parse_policy("untuned").apply(relax_module(model, shape), target, tmp_path)
    assert _scheduled(mod)[1] == 0
    data, expected = reference_io(model, shape)
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    assert relative_error(vm["main"](tvm.runtime.tensor(data, tvm.cpu())).numpy(), expected) <= MODEL_TOLERANCE


class TinyNet(torch.nn.Sequential):
    def __init__(self):
        super().__init__(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 4)
        )


@pytest.mark.slow
def test_tuned_policy_tunes_each_reducing_function_of_a_model(host_target, tmp_path):
    model, shape = TinyNet().eval(), (1, 3, 6, 6)
    target = tvm.target.Target(host_target)
    mod = parse_policy("tuned:2").apply(relax_module(model, shape), target, tmp_path)
    databases = [d for d in (tmp_path / "metaschedule" / "2").glob("*/*") if d.is_dir()]
    assert len(databases) == 2  # conv + bias + ReLU, dense + bias
    data, expected = reference_io(model, shape)
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    assert relative_error(vm["main"](tvm.runtime.tensor(data, tvm.cpu())).numpy(), expected) <= MODEL_TOLERANCE


def test_measure_command_measures_once_and_refuses_transfer(registry_dir, tmp_path):
    from typer.testing import CliRunner

    from hwloop.cli import app

    def invoke(*args):
        return CliRunner().invoke(
            app,
            [
                "measure",
                "--registry",
                str(registry_dir),
                "-d",
                "local",
                "--tables",
                str(tmp_path),
                "--cache",
                str(tmp_path / "cache"),
                *args,
            ],
        )

    first = invoke("-m", "resnet20", "--json")
    assert first.exit_code == 0, first.output
    (record,) = json.loads(first.stdout)
    assert record["model"] == "resnet20" and record["status"] == "ok" and record["latency_ms"] > 0
    assert json.loads(invoke("-m", "resnet20", "--json").stdout) == []
    refused = invoke("-m", "resnet20", "--schedule", "transfer:4")
    assert refused.exit_code == 2 and "single layers" in refused.output

    thinned = invoke("-m", "resnet20", "--thinned", "0.5", "--json")
    assert thinned.exit_code == 0, thinned.output
    (record,) = json.loads(thinned.stdout)
    assert record["model"] == "resnet20@thinned:0.5" and record["status"] == "ok"
    models = tables.read_models(tmp_path, "local").set_index("model")
    dense, half = (json.loads(models.loc[name, "layers"]) for name in ("resnet20", "resnet20@thinned:0.5"))
    assert [layer["out_channels"] // 2 for layer in dense[:-1]] == [layer["out_channels"] for layer in half[:-1]]
    assert invoke("-m", "resnet20", "--thinned", "0.5,1").exit_code == 2
