import math

import pytest
import torch

from hwloop.models import mobilenetv2, resnet20
from hwloop.prune import MIN_RATIO
from hwloop.prune.allocator import _lost, allocate
from hwloop.prune.baselines import global_ranking, uniform
from hwloop.prune.cost import Macs, PredictedLatency, SoftCost
from hwloop.prune.groups import ChannelGroups, PruneError
from hwloop.prune.importance import CRITERIA, scores


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    groups = ChannelGroups(resnet20(10, 1).eval(), (1, 1, 28, 28))
    return groups, scores(groups, "l1")


def _reachable(groups, cost, share: float) -> float:
    """A budget (fraction of dense) ``share`` of the way from an aligned small plan's cost to the dense cost."""
    dense = cost.total(groups.dense)
    small = cost.total({g.name: min(g.size, cost.step) for g in groups.groups})
    assert small < dense
    return (small + share * (dense - small)) / dense


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_allocator_meets_the_predicted_budget(resnet, resnet20_predictor, share):
    groups, importance = resnet
    cost = PredictedLatency(groups, resnet20_predictor)
    dense = cost.total(groups.dense)
    budget = _reachable(groups, cost, share)
    plan = allocate(groups, cost, importance, cost.target(budget))
    assert cost.total(plan) <= budget * dense
    assert cost.total(plan) == pytest.approx(resnet20_predictor.predict_model(groups.layers(plan)))
    assert sum(plan.values()) < sum(groups.dense.values())
    assert all(plan[g.name] >= math.ceil(MIN_RATIO * g.size) for g in groups.groups)
    keep = groups.top(importance, plan)
    assert all(len(keep[name]) == count for name, count in plan.items())
    assert all(
        float(importance[name][keep[name]].min()) >= float(importance[name].sort().values[-count])
        for name, count in plan.items()
    )


def test_allocator_with_round_to_keeps_whole_steps(resnet, resnet20_predictor):
    groups, importance = resnet
    cost = PredictedLatency(groups, resnet20_predictor)
    target = cost.target(_reachable(groups, cost, 0.5))
    plan = allocate(groups, cost, importance, target, round_to=8)
    assert cost.total(plan) <= target and plan != groups.dense
    assert all(count % 8 == 0 for count in plan.values())


def test_budget_in_ms_and_unreachable_budget(resnet, resnet20_predictor):
    groups, importance = resnet
    cost = PredictedLatency(groups, resnet20_predictor)
    ms = _reachable(groups, cost, 0.5) * cost.total(groups.dense)
    plan = allocate(groups, cost, importance, ms)
    assert cost.total(plan) <= ms
    assert cost.target(f"{ms}ms") == pytest.approx(ms)
    assert cost.target("50%") == cost.target(0.5) == pytest.approx(0.5 * cost.total(groups.dense))
    assert cost.target("50%", dense=2.0) == pytest.approx(1.0) and cost.target(f"{ms}ms", dense=2.0) == pytest.approx(
        ms
    )
    for bad in ("2", "fast", "-1ms"):
        with pytest.raises(PruneError, match="budget: "):
            cost.target(bad)
    with pytest.raises(PruneError, match="out of reach"):
        allocate(groups, cost, importance, 1e-6)


def test_baselines_meet_their_own_budgets(resnet, resnet20_predictor):
    groups, importance = resnet
    latency, macs = PredictedLatency(groups, resnet20_predictor), Macs(groups)
    budget = _reachable(groups, latency, 0.5)
    plan = uniform(groups, latency, latency.target(budget), step=latency.step)
    assert latency.total(plan) <= latency.target(budget)
    assert all(count % latency.step == 0 for count in plan.values())
    assert len({count / groups.by_name[name].size for name, count in plan.items()}) <= 3
    plan = global_ranking(groups, macs, importance, macs.target(0.5), step=latency.step)
    assert macs.total(plan) <= macs.target(0.5)
    assert all(count % latency.step == 0 for count in plan.values())
    ragged = global_ranking(groups, macs, importance, macs.target(0.5))
    assert macs.total(ragged) <= macs.target(0.5) and any(count % latency.step for count in ragged.values())
    with pytest.raises(
        PruneError, match=f"out of reach; the smallest plan .10% of each group, in steps of {latency.step}."
    ):
        global_ranking(groups, macs, importance, 1e-6, min_ratio=0.1, step=latency.step)
    with pytest.raises(PruneError, match=f"out of reach with one ratio for every group, in steps of {latency.step} "):
        uniform(groups, latency, 1e-6, step=latency.step)


def test_soft_cost_follows_the_predictor(resnet, resnet20_predictor):
    groups, _ = resnet
    cost = PredictedLatency(groups, resnet20_predictor)
    soft = SoftCost(cost)
    dense = {name: torch.tensor(float(size)) for name, size in groups.dense.items()}
    assert float(soft(dense)) == pytest.approx(cost.total(groups.dense), rel=1e-4)
    plan = {name: size if size <= cost.step else size // 2 for name, size in groups.dense.items()}
    counts = {name: torch.tensor(float(count), requires_grad=True) for name, count in plan.items()}
    value = soft(counts)
    value.backward()
    assert float(value.detach()) == pytest.approx(cost.total(plan), rel=0.05)
    assert float(value.detach()) < cost.total(groups.dense)
    grads = [float(t.grad) for t in counts.values()]
    assert all(math.isfinite(g) for g in grads) and any(g != 0 for g in grads)


def test_a_move_loses_its_share_of_the_group():
    narrow, wide = torch.linspace(0.5, 1.5, 16), torch.linspace(0.5, 1.5, 960)  # normalised to a mean of 1
    lost_narrow, lost_wide = _lost(narrow), _lost(wide)
    assert lost_narrow[8] == pytest.approx(lost_wide[480], rel=0.03)  # half of either group
    assert lost_narrow[-1] == pytest.approx(1.0) and lost_wide[-1] == pytest.approx(1.0)
    assert lost_narrow[1] > 50 * lost_wide[1]  # one channel of 16 against one of 960
    assert list(lost_narrow) == sorted(lost_narrow) and lost_narrow[0] == 0


def test_every_criterion_scores_depthwise_groups():
    groups = ChannelGroups(mobilenetv2(10, 3).eval(), (1, 3, 32, 32))
    batch = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))]
    for criterion in CRITERIA:
        result = scores(groups, criterion, batch)
        assert all(result[g.name].shape == (g.size,) and torch.isfinite(result[g.name]).all() for g in groups.groups)
    with pytest.raises(PruneError, match="unknown criterion 'l3'"):
        scores(groups, "l3")
