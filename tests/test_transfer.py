import math
import random

import numpy as np
import pytest
import tvm

from hwloop.kernels import prim_module, random_inputs, reference, relative_error, tolerance
from hwloop.layers import LayerConfig
from hwloop.schedules import DEFAULT_REVISION, PolicyError, parse_policy, policy_of_rows
from hwloop.schedules.transfer import anchors, grid_bracket, refit

TRIALS = 2


def test_grid_bracket_gives_the_grid_points_around_a_count():
    assert grid_bracket(64) == [64]
    assert grid_bracket(61) == [48, 64]
    assert grid_bracket(5) == [4, 6]
    assert grid_bracket(1) == [1]
    assert grid_bracket(10, multiple=4) == [8, 12]


def test_anchors_are_the_nearest_valid_layers():
    conv = LayerConfig("conv2d", 64, 61, 14, 14, 3, 1, 1)
    assert [(a.in_channels, a.out_channels) for a in anchors(conv)] == [(64, 64), (64, 48)]
    depthwise = LayerConfig("depthwise_conv2d", 37, 74, 14, 14, 3, 1, 1, groups=37)
    for anchor in anchors(depthwise):
        assert anchor.groups == anchor.in_channels and anchor.out_channels == 2 * anchor.in_channels
    grouped = LayerConfig("conv2d", 20, 28, 8, 8, 3, 1, 1, groups=4)
    assert all(a.in_channels % 4 == 0 and a.out_channels % 4 == 0 for a in anchors(grouped))


def test_refit_keeps_fitting_inner_factors_and_always_multiplies_to_the_extent():
    assert refit([2, 4, 8], 64) == [2, 4, 8]
    assert refit([4, 2, 8], 60) == [15, 1, 4]
    rng = random.Random(0)
    for _ in range(200):
        factors = [rng.choice([1, 2, 3, 4, 8, 16]) for _ in range(rng.randint(2, 4))]
        extent = rng.randint(1, 300)
        fitted = refit(factors, extent)
        assert math.prod(fitted) == extent and len(fitted) == len(factors)


def test_policy_names_and_whole_models_are_refused():
    policy = parse_policy("transfer:16")
    assert (policy.kind, policy.trials, policy.name) == ("transfer", 16, f"transfer:16@{DEFAULT_REVISION}")
    assert parse_policy(policy.name) == policy
    with pytest.raises(PolicyError, match="'transfer:16': timed under an earlier revision of the default rules"):
        policy_of_rows("transfer:16")  # transfer keeps the default rules as a candidate
    with pytest.raises(PolicyError, match="single layers"):
        policy.apply(prim_module(LayerConfig("linear", 8, 8)), None, None)


def _run(config: LayerConfig, mod, target) -> np.ndarray:
    executable = tvm.compile(mod, target)
    device = tvm.cpu()
    data, weight = random_inputs(config)
    out = tvm.runtime.empty(config.output_shape, config.dtype, device)
    executable["main"](tvm.runtime.tensor(data, device), tvm.runtime.tensor(weight, device), out)
    return out.numpy()


@pytest.mark.slow
def test_transferred_schedules_are_correct_and_reuse_the_anchors(host_target, tmp_path):
    target = tvm.target.Target(host_target)
    policy = parse_policy(f"transfer:{TRIALS}")
    databases = tmp_path / "metaschedule" / str(TRIALS)
    for out_channels in (13, 14):  # both between the anchors 12 and 16
        config = LayerConfig("conv2d", 16, out_channels, 8, 8, 3, 1, 1)
        scheduled = policy.apply(prim_module(config), target, tmp_path, config)
        data, weight = random_inputs(config)
        assert relative_error(_run(config, scheduled, target), reference(config, data, weight)) <= tolerance(config)
        workloads = [d for d in databases.glob("*/*") if d.is_dir()]
        assert len(workloads) == 2
