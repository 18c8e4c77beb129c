from pathlib import Path

import pytest
import tvm
from tvm import te

from hwloop.builder import BuildJob, build
from hwloop.kernels import random_inputs
from hwloop.layers import LayerConfig
from hwloop.registry import Protocol
from hwloop.runner import SENTINEL, Measurement, Runner, Sentinel, Trial
from hwloop.targets import runtime_device_type
from hwloop.transports import trial, usage
from hwloop.transports.local import LocalTransport

CONV = LayerConfig("conv2d", 8, 8, 12, 12, kernel=3, padding=1)
FAST = Protocol(warmup=1, number=2, repeat=4, min_repeat_ms=1, threads=1, cpus=[0], trials=2, max_trials=4)


@pytest.fixture(scope="module")
def transport():
    with LocalTransport(FAST) as t:
        yield t


def test_measures_in_trials_with_what_the_cpu_did_meanwhile(transport, host_target, cache_dir):
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    m = Runner(transport, FAST).measure(CONV, built.artifact)
    assert m.status == "ok", m.error
    assert FAST.trials <= len(m.trials) <= FAST.max_trials
    assert all(len(t.latencies_ms) == FAST.repeat for t in m.trials)
    assert len(m.latencies_ms) == FAST.repeat * len(m.trials)
    assert 0 < m.min_ms <= m.latency_ms
    assert m.check_error <= 1e-4
    assert all(0 <= t.wait <= 1 for t in m.trials)  # the local server reports its CPU
    assert all(t.steal is None or 0 <= t.steal <= 1 for t in m.trials)  # None: a trial shorter than a clock tick


def test_a_batch_gets_one_measurement_per_artifact_in_order(transport, host_target, cache_dir):
    configs = [LayerConfig("conv2d", 8, c, 12, 12, kernel=3, padding=1) for c in (4, 8, 16)]
    batch = [(c, build(BuildJob(c, host_target, "untuned"), cache_dir).artifact) for c in configs]
    measured = Runner(transport, FAST).measure_layers(batch)
    assert [m.status for m in measured] == ["ok"] * 3
    assert measured[0].latency_ms < measured[2].latency_ms  # untuned code is linear in the output channels


def test_a_trial_on_the_device_is_one_call_on_a_fresh_copy(host_target, cache_dir):
    """``hwloop.trial`` loads a copy of the uploaded library (removed once loaded) and times it on
    fresh buffers between two readings of the session process's CPU."""
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    with LocalTransport(FAST, name="trial-test") as own:  # its own server: a failure here leaves no session behind
        session = own.connect()
        session.upload(built.artifact, target="kernel.so")
        folder = Path(session.get_function("tvm.rpc.server.workpath")("kernel.so")).parent
        device_type = runtime_device_type(host_target)
        device = session.device(device_type, 0)
        data, weight = random_inputs(CONV)
        args = [
            tvm.runtime.tensor(data, device),
            tvm.runtime.tensor(weight, device),
            tvm.runtime.empty(CONV.output_shape, "float32", device),
        ]
        call = session.get_function("hwloop.trial")
        for flush in (False, True):
            before, after, seconds = trial.parse(call("kernel.so", device_type, 0, 1, 2, 3, 0, 0, flush, "0", 1, *args))
            assert len(seconds) == 3 and min(seconds) > 0
            assert all(0 <= b <= a for b, a in zip(usage.parse(before).values(), usage.parse(after).values()))
            assert [p.name for p in folder.iterdir()] == ["kernel.so"]


def test_trials_settle_when_they_agree_and_the_estimate_is_their_trimmed_mean():
    p = Protocol(trials=3, max_trials=5, agree=0.02)
    m = Measurement(trials=[Trial([1.0, 1.2, 1.0]), Trial([1.01]), Trial([1.012])])
    assert m.trial_ms == [1.0, 1.01, 1.012] and m.settled(p)
    assert m.latency_ms == pytest.approx((1.0 + 1.01 + 1.012) / 3)
    m.trials.append(Trial([1.6]))  # a trial in another state: more trials, up to max_trials
    assert abs(m.spread - 0.6) < 1e-9 and not m.settled(p)
    m.trials.append(Trial([0.98]))
    assert m.settled(p)
    assert m.latency_ms == pytest.approx((1.0 + 1.01 + 1.012) / 3)  # the fastest and the slowest left out


def test_a_trial_s_latency_is_its_fastest_repeat_or_their_median():
    repeats = [1.3, 1.0, 1.2]
    assert Trial(repeats).ms == 1.0 == Trial(repeats, statistic=Protocol().statistic).ms
    assert Trial(repeats, statistic="median").ms == 1.2


def test_a_trial_is_disturbed_by_waiting_or_steal():
    p = Protocol(max_wait=0.02, max_steal=0.02)
    assert not Trial([1.0], wait=0.01, steal=0.0).disturbed(p)
    assert Trial([1.0], wait=0.3, steal=0.0).disturbed(p)
    assert Trial([1.0], wait=0.0, steal=0.05).disturbed(p)
    assert not Trial([1.0]).disturbed(p)  # a device that cannot tell


def test_a_sentinel_reading_is_slow_beyond_its_slack_over_the_fastest_one():
    sentinel = Sentinel(1.25)
    assert not sentinel.slow(1.0) and not sentinel.slow(1.2)
    assert sentinel.slow(1.8) and sentinel.slow(1.8)  # however long the slower state lasts
    assert not sentinel.slow(0.9) and sentinel.slow(1.2)
    assert (sentinel.fastest, sentinel.count) == (0.9, 6)
    seeded = Sentinel(1.25, fastest=0.5)  # a session begun in a slow state, told the table's fastest
    assert seeded.slow(1.0) and seeded.fastest == 0.5


def test_rounds_before_and_after_which_the_sentinel_ran_slow_are_dropped_and_taken_again(
    transport, host_target, cache_dir
):
    sentinel = build(BuildJob(SENTINEL, host_target, "default"), cache_dir).artifact
    protocol = FAST.model_copy(update={"max_wait": 1.0, "max_steal": 1.0, "max_disturbed": 2})
    runner = Runner(transport, protocol, host_target, sentinel=sentinel)
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    first = runner.measure(CONV, built.artifact)
    assert first.status == "ok" and runner.sentinel_readings.count >= 2  # before and after each round
    assert first.sentinel_ms >= runner.sentinel_readings.fastest > 0
    runner.sentinel_readings.fastest = 1e-9  # a reading no trial can reach: every later round ran slow
    m = runner.measure(CONV, built.artifact)
    assert m.status == "ok", m.error
    assert m.disturbed == 2 and m.kept_disturbed >= protocol.trials and not m.quiet

    class Blips(Sentinel):
        """Every other reading slow: the sentinel's own blips, never slow on both sides of a round."""

        def slow(self, ms: float) -> bool:
            super().slow(ms)
            return self.count % 2 == 0

    runner.sentinel_readings = Blips(protocol.sentinel)
    blipped = runner.measure(CONV, built.artifact)
    assert blipped.status == "ok" and blipped.disturbed == 0 and blipped.quiet
    assert runner.sentinel_readings.count >= 2
    without = protocol.model_copy(update={"sentinel": None})
    assert Runner(transport, without, sentinel=sentinel).sentinel_readings is None


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


HOG = "import os\nos.sched_setaffinity(0, {0})\nprint('spinning', flush=True)\nwhile True: pass\n"


def test_trials_beside_a_process_on_the_timing_cpu_are_dropped_and_taken_again(transport, host_target, cache_dir):
    import subprocess
    import sys
    import threading

    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    hog = subprocess.Popen([sys.executable, "-c", HOG], stdout=subprocess.PIPE, text=True)
    threading.Timer(2.0, hog.kill).start()
    try:
        assert hog.stdout.readline().strip() == "spinning"  # on the timing CPU before the first trial
        # repeats long enough that the scheduler shares the CPU within each of them
        protocol = FAST.model_copy(update={"max_disturbed": 50, "min_repeat_ms": 25})
        m = Runner(transport, protocol).measure(CONV, built.artifact)
    finally:
        hog.kill()
        hog.wait()
    assert m.status == "ok", m.error
    assert m.disturbed >= 1 and m.quiet
    assert all(t.wait <= FAST.max_wait for t in m.trials)


def test_fingerprint_describes_this_machine(transport):
    fp = transport.fingerprint()
    assert fp["cores"] >= 1 and fp["arch"] and len(fp["id"]) == 12
    assert fp["load1"] >= 0
