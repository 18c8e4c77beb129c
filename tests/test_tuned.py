import subprocess
import sys

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm import te, topi

from hwloop.schedules.tuned import database_dir, tune

TRIALS = 8


def _conv(in_channels: int, out_channels: int, size: int) -> tvm.IRModule:
    data = te.placeholder((1, in_channels, size, size), "float32", name="data")
    weight = te.placeholder((out_channels, in_channels, 3, 3), "float32", name="weight")
    out = topi.nn.conv2d_nchw(data, weight, 1, 1, 1)
    return tvm.IRModule({"main": te.create_prim_func([data, weight, out]).with_attr("global_symbol", "main")})


def _records(directory) -> int:
    path = directory / "database_tuning_record.json"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def target(host_target):
    return tvm.target.Target(host_target)


@pytest.fixture(scope="module")
def tuned_conv(tmp_path_factory, target):
    """A small conv tuned once into a fresh work_dir: (work_dir, module, scheduled module)."""
    work_dir = tmp_path_factory.mktemp("tuning")
    mod = _conv(8, 8, 16)
    return work_dir, mod, tune(mod, target, TRIALS, work_dir)


def test_import_does_not_load_tvm():
    code = "import sys, hwloop.schedules.tuned; assert 'tvm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rejects_an_empty_budget(tmp_path):
    with pytest.raises(ValueError, match="trials"):
        tune(_conv(4, 4, 8), None, 0, tmp_path)


def test_each_target_and_workload_has_its_own_database(host_target, tmp_path):
    one, two = (tvm.target.Target({**host_target, "num-cores": n}) for n in (1, 2))
    conv = _conv(8, 8, 16)
    assert database_dir(conv, one, tmp_path) == database_dir(_conv(8, 8, 16), one, tmp_path)
    assert database_dir(conv, one, tmp_path) != database_dir(conv, two, tmp_path)
    assert database_dir(conv, one, tmp_path) != database_dir(_conv(8, 4, 16), one, tmp_path)


@pytest.mark.slow
def test_tuned_conv_is_scheduled_and_matches_torch(tuned_conv, target):
    work_dir, mod, scheduled = tuned_conv
    assert not tvm_ffi.structural_equal(scheduled, mod)
    assert 1 <= _records(database_dir(mod, target, work_dir)) <= TRIALS

    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, 8, 16, 16)).astype("float32")
    weight = rng.standard_normal((8, 8, 3, 3)).astype("float32")
    device = tvm.cpu()
    out = tvm.runtime.empty((1, 8, 16, 16), "float32", device)
    tvm.compile(scheduled, target)["main"](tvm.runtime.tensor(data, device), tvm.runtime.tensor(weight, device), out)
    expected = torch.nn.functional.conv2d(torch.from_numpy(data), torch.from_numpy(weight), padding=1).numpy()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_second_call_reuses_the_database(tuned_conv, target):
    work_dir, mod, scheduled = tuned_conv
    directory = database_dir(mod, target, work_dir)
    records, log = _records(directory), (directory / "logs" / "tune.log").read_text()

    again = tune(_conv(8, 8, 16), target, TRIALS, work_dir)

    assert _records(directory) == records
    assert (directory / "logs" / "tune.log").read_text() == log
    assert tvm_ffi.structural_equal(again, scheduled)


@pytest.mark.slow
def test_another_workload_gets_its_own_records(tuned_conv, target):
    work_dir, mod, _ = tuned_conv
    records = _records(database_dir(mod, target, work_dir))
    other = _conv(8, 4, 8)

    tune(other, target, 4, work_dir)

    assert database_dir(other, target, work_dir) != database_dir(mod, target, work_dir)
    assert 1 <= _records(database_dir(other, target, work_dir)) <= 4
    assert _records(database_dir(mod, target, work_dir)) == records


@pytest.mark.slow
def test_no_valid_candidate_raises(tmp_path):
    board = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 1})
    with pytest.raises(RuntimeError, match="no valid schedule"):
        tune(_conv(4, 4, 8), board, 2, tmp_path)
