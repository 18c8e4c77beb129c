import gzip
import json
import random

import pytest
import torch

from hwloop.models import resnet20
from hwloop.prune import data as data_mod
from hwloop.prune import export
from hwloop.prune.data import DataError, load_data
from hwloop.prune.groups import ChannelGroups, PruneError

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    dense = resnet20(10, 1).eval()
    pruned = resnet20(10, 1).eval()
    pruned.load_state_dict(dense.state_dict())
    groups = ChannelGroups(pruned, SHAPE)
    rng = random.Random(0)
    keep = {g.name: rng.sample(range(g.size), rng.randint(1, g.size)) for g in groups.groups}
    groups.apply(keep)
    out = tmp_path_factory.mktemp("pruned")
    record = {
        "model": "resnet20",
        "input_shape": list(SHAPE),
        "num_classes": 10,
        "groups": {
            g.name: {"dense": g.size, "kept": len(keep[g.name]), "channels": sorted(keep[g.name])}
            for g in groups.groups
        },
    }
    files = export.save(out, pruned, dense, record)
    return out, pruned, dense, files


def test_reload_reproduces_outputs(saved):
    out, pruned, dense, files = saved
    assert {p.name for p in files} >= {"plan.json", "pruned.pt", "dense.pt", "pruned.pt2"}
    model, dense_again, record = export.load(out)
    x = torch.randn(3, *SHAPE[1:])
    torch.testing.assert_close(model(x), pruned(x))
    torch.testing.assert_close(dense_again(x), dense(x))
    assert record["groups"]["layer2.1.conv1"]["dense"] == 32


def test_recorded_channels_remake_the_pruned_model_from_the_dense_one(saved):
    out, pruned, dense, _ = saved
    _, _, record = export.load(out)
    remade = resnet20(10, 1).eval()
    remade.load_state_dict(dense.state_dict())
    ChannelGroups(remade, SHAPE).apply({name: g["channels"] for name, g in record["groups"].items()})
    x = torch.randn(2, *SHAPE[1:])
    torch.testing.assert_close(remade(x), pruned(x))


def test_exported_program_reproduces_outputs(saved):
    out, pruned, _, _ = saved
    program = torch.export.load(out / "pruned.pt2")
    x = torch.randn(1, *SHAPE[1:])
    torch.testing.assert_close(program.module()(x), pruned(x))


def test_bad_folders_name_file_and_field(saved, tmp_path):
    out, *_ = saved
    with pytest.raises(PruneError, match="plan.json: cannot read"):
        export.load(tmp_path)
    record = json.loads((out / "plan.json").read_text())
    (tmp_path / "plan.json").write_text(json.dumps({**record, "groups": {"layer1.0.conv1": {"kept": "x"}}}))
    with pytest.raises(PruneError, match=r"plan.json: groups.layer1.0.conv1.kept"):
        export.load(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({**record, "groups": {"layer1.0.conv1": {"kept": 99}}}))
    with pytest.raises(PruneError, match=r"plan.json: plan: layer1.0.conv1: channel count must be an integer in 1..16"):
        export.load(tmp_path)
    group = record["groups"]["layer1.0.conv1"]
    assert group["kept"] > 1
    for channels in (group["channels"][::-1], [*group["channels"][:-1], 16], group["channels"][1:]):
        broken = {**record["groups"], "layer1.0.conv1": {**group, "channels": channels}}
        (tmp_path / "plan.json").write_text(json.dumps({**record, "groups": broken}))
        with pytest.raises(PruneError, match=r"plan.json: groups.layer1.0.conv1.channels: expected"):
            export.load(tmp_path)
    (tmp_path / "plan.json").write_text((out / "plan.json").read_text())
    (tmp_path / "pruned.pt").write_bytes((out / "dense.pt").read_bytes())
    with pytest.raises(PruneError, match="pruned.pt: does not fit the plan's model"):
        export.load(tmp_path)


def test_fashion_mnist_subsets():
    data = load_data("fashion-mnist", 16, train_samples=64, test_samples=32)
    assert data.input_shape == SHAPE and data.num_classes == 10
    assert len(data.train.dataset) == 64 and len(data.test.dataset) == 32
    images, labels = next(iter(data.train))
    assert images.shape == (16, 1, 28, 28) and labels.dtype == torch.int64
    assert abs(float(data.train.dataset.tensors[0].mean())) < 1e-3


def test_bad_dataset_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST", tmp_path)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: missing"):
        load_data("fashion-mnist")
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"not an idx file")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not an IDX file"):
        load_data("fashion-mnist")
    with pytest.raises(DataError, match="dataset 'mnist'"):
        load_data("mnist")
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "data_batch_1.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="data_batch_1.bin: 100 bytes"):
        load_data(f"cifar10:{tmp_path / 'cifar'}")
