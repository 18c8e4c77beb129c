import pytest
import tvm
from tvm import te

from hwloop.builder import BuildJob, build
from hwloop.layers import LayerConfig
from hwloop.registry import Protocol
from hwloop.runner import Runner
from hwloop.transports.local import LocalTransport

CONV = LayerConfig("conv2d", 8, 8, 12, 12, kernel=3, padding=1)
FAST = Protocol(warmup=1, number=2, repeat=4, min_repeat_ms=1, threads=1, cpus=[0])


@pytest.fixture(scope="module")
def transport():
    with LocalTransport(FAST) as t:
        yield t


def test_measures_with_the_protocol(transport, host_target, cache_dir):
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    m = Runner(transport, FAST).measure(CONV, built.artifact)
    assert m.status == "ok", m.error
    assert 1 <= m.attempts <= FAST.max_attempts
    assert len(m.latencies_ms) == FAST.repeat
    assert 0 < m.min_ms <= m.median_ms
    assert m.check_error <= 1e-4


def test_wrong_code_is_caught_before_timing(transport, host_target, tmp_path):
    data = te.placeholder(CONV.input_shape, "float32", name="data")
    weight = te.placeholder(CONV.weight_shape, "float32", name="weight")
    wrong = te.compute(CONV.output_shape, lambda n, c, h, w: data[n, c, h, w] * 2.0, name="out")
    mod = tvm.IRModule({"main": te.create_prim_func([data, weight, wrong]).with_attr("global_symbol", "main")})
    artifact = tmp_path / "wrong.so"
    tvm.compile(mod, tvm.target.Target(host_target)).export_library(str(artifact))
    m = Runner(transport, FAST).measure(CONV, str(artifact))
    assert (m.status, m.stage) == ("mismatch", "check")
    assert m.check_error > 0.1 and not m.latencies_ms


def test_a_failure_does_not_stop_the_next_measurement(transport, host_target, cache_dir, tmp_path):
    runner = Runner(transport, FAST)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    failed = runner.measure(CONV, str(broken))
    assert failed.status == "failed" and failed.stage == "load" and failed.error
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    assert runner.measure(CONV, built.artifact).status == "ok"


def test_fingerprint_describes_this_machine(transport):
    fp = transport.fingerprint()
    assert fp["cores"] >= 1 and fp["arch"] and len(fp["id"]) == 12
    assert fp["load1"] >= 0
