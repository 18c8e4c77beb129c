import os
import signal

import numpy as np
import pytest
import tvm

from hwloop.builder import BuildJob, BuildPool, BuildQueue, build
from hwloop.kernels import random_inputs, reference, relative_error, tolerance
from hwloop.layers import LayerConfig

CONFIGS = [
    LayerConfig("conv2d", 8, 12, 14, 14, kernel=3, padding=1),
    LayerConfig("conv2d", 3, 16, 15, 15, kernel=3, stride=2, padding=1),
    LayerConfig("conv2d", 16, 24, 7, 7, kernel=1),
    LayerConfig("conv2d", 8, 12, 9, 9, kernel=5, padding=2, groups=4),
    LayerConfig("depthwise_conv2d", 12, 12, 10, 10, kernel=3, stride=2, padding=1, groups=12),
    LayerConfig("depthwise_conv2d", 6, 12, 8, 8, kernel=3, padding=1, groups=6),
    LayerConfig("linear", 70, 13, batch=2),
]


def _run_local(config: LayerConfig, artifact: str) -> np.ndarray:
    module = tvm.runtime.load_module(artifact)
    data, weight = random_inputs(config, seed=3)
    device = tvm.cpu()
    out = tvm.runtime.empty(config.output_shape, config.dtype, device)
    module["main"](tvm.runtime.tensor(data, device), tvm.runtime.tensor(weight, device), out)
    return relative_error(out.numpy(), reference(config, data, weight))


@pytest.mark.parametrize("policy", ["untuned", "default"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.id)
def test_build_matches_torch(config, policy, host_target, cache_dir):
    built = build(BuildJob(config, host_target, policy), cache_dir)
    assert built.error is None and built.artifact
    assert _run_local(config, built.artifact) <= tolerance(config)


def test_builds_are_cached_by_config_target_and_policy(host_target, tmp_path):
    config = CONFIGS[0]
    first = build(BuildJob(config, host_target, "untuned"), tmp_path)
    again = build(BuildJob(config, host_target, "untuned"), tmp_path)
    other = build(BuildJob(config, {**host_target, "num-cores": 2}, "untuned"), tmp_path)
    assert not first.cached and again.cached and not other.cached
    assert again.artifact == first.artifact != other.artifact


def test_a_failing_build_is_a_value(host_target, tmp_path):
    built = build(BuildJob(CONFIGS[0], host_target, "untuned", cc="/nonexistent/cross-gcc"), tmp_path)
    assert built.artifact is None
    assert "cross-gcc" in built.error or "No such file" in built.error


def test_pool_builds_in_worker_processes(host_target, tmp_path):
    with BuildPool(tmp_path, workers=1) as pool:
        results = [pool.submit(BuildJob(c, host_target, "untuned")).result() for c in CONFIGS[:2]]
    assert all(r.artifact for r in results)
    assert all(_run_local(c, r.artifact) <= tolerance(c) for c, r in zip(CONFIGS, results))


def test_queue_survives_killed_workers(host_target, tmp_path):
    killer = tmp_path / "kills-its-parent"
    killer.write_text("#!/bin/sh\nkill -9 $PPID\n")
    killer.chmod(0o755)
    crashing = BuildJob(CONFIGS[1], host_target, "untuned", cc=str(killer))
    jobs = [BuildJob(CONFIGS[0], host_target, "untuned"), crashing, BuildJob(CONFIGS[2], host_target, "untuned")]
    with BuildPool(tmp_path, workers=1) as pool:
        queue = BuildQueue(pool, jobs, depth=2)
        for process in list(pool._executor._processes.values()):
            os.kill(process.pid, signal.SIGKILL)
        results = list(queue)
    assert [r.job for r in results] == jobs
    assert results[0].artifact and results[2].artifact
    assert results[1].artifact is None and "worker died 2 times" in results[1].error


def test_a_hung_build_fails_after_its_timeout_and_the_queue_goes_on(host_target, tmp_path):
    import psutil

    hang = tmp_path / "hangs"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    jobs = [BuildJob(CONFIGS[0], host_target, "untuned", cc=str(hang)), BuildJob(CONFIGS[1], host_target, "untuned")]
    with BuildPool(tmp_path, workers=1) as pool:
        results = list(BuildQueue(pool, jobs, timeout=5))
    assert results[0].artifact is None and "did not finish within 5 s" in results[0].error
    assert results[1].artifact
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "600"]]
