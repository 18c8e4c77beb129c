"""The board check's correction loop: plans re-made at scaled targets until one meets the budget as
measured. A board here is a function of the predicted target (the real board is timed in
test_prune_run's end-to-end test)."""

import itertools

import pytest

from hwloop.prune.board import correct
from hwloop.prune.groups import PruneError


def _loop(board, target=0.5, rounds=3):
    """``correct`` with plans that are their own predicted latency and a dense model of 1 ms."""
    return correct(lambda t: t, lambda t: t, lambda t: (1.0, board(t)), target, lambda dense_ms: 0.5 * dense_ms, rounds)


def test_a_board_slower_than_predicted_tightens_the_target():
    checked = _loop(lambda t: 1.3 * t)
    assert len(checked.rounds) == 2 and checked.chosen == 1
    first, second = checked.rounds
    assert not first.met and first.measured_ms == pytest.approx(0.65)
    assert second.target_ms == pytest.approx(0.5 * 0.5 / 0.65) and second.met
    assert checked.planned == second.target_ms and checked.record("b")["met"]


def test_a_board_faster_than_predicted_loosens_it_and_keeps_the_slowest_plan_that_meets():
    checked = _loop(lambda t: 0.5 * t)
    assert [r.target_ms for r in checked.rounds] == pytest.approx([0.5, 1.0])
    assert checked.chosen == 1 and checked.rounds[1].measured_ms == pytest.approx(0.5)


def test_a_plan_under_its_target_is_corrected_from_its_own_prediction():
    steps = (0.3, 0.42, 0.47)  # the plans there are: a target between steps gets the step under it

    def plan_at(t):
        return max(step for step in steps if step <= t)

    checked = correct(plan_at, lambda p: p, lambda p: (1.0, 1.1 * p), 0.5, lambda dense_ms: 0.5 * dense_ms, 3)
    first, second = checked.rounds[:2]
    assert first.predicted_ms == 0.47 and not first.met  # 0.517 ms measured
    assert second.target_ms == pytest.approx(0.47 * 0.5 / 0.517) and second.predicted_ms == 0.42 and second.met
    assert checked.planned == 0.42 and checked.chosen == 1


def test_one_noisy_round_moves_the_target_less_than_the_last_round_alone_would():
    timings = iter([0.51, 0.64, 0.5, 0.5])  # the second plan, predicted cheaper, measured in a slow spell

    checked = _loop(lambda t: next(timings))
    first, second, third = (r.target_ms for r in checked.rounds)
    assert second == pytest.approx(0.5 * 0.5 / 0.51)
    proposals = [first * 0.5 / 0.51, second * 0.5 / 0.64]
    assert third == pytest.approx((proposals[0] * proposals[1]) ** 0.5) and third > proposals[1]
    assert checked.chosen == 2 and checked.rounds[2].timings == 2  # timed again before it was kept


def test_a_staircase_is_bisected_once_the_goal_is_bracketed():
    # targets from 0.5 up measure 0.6 (over the goal), below 0.43 0.3 (far under), between them 0.49
    checked = _loop(lambda t: 0.6 if t >= 0.5 else 0.3 if t < 0.43 else 0.49)
    first, second, third = (r.target_ms for r in checked.rounds)
    assert third == pytest.approx((first + second) / 2) and checked.rounds[2].met and checked.chosen == 2


def test_an_unreachable_budget_keeps_the_fastest_plan_and_says_so():
    checked = _loop(lambda t: max(t, 0.8))
    assert len(checked.rounds) == 3 and not any(r.met for r in checked.rounds)
    assert checked.chosen == min(range(3), key=lambda i: checked.rounds[i].measured_ms)
    assert checked.record("b")["met"] is False


def test_each_plan_is_judged_against_the_dense_model_timed_beside_it():
    dense = iter([1.0, 1.0, 1.5, 1.5])  # the board runs slower during the third round and its second timing

    def board(t):
        d = next(dense)
        return d, d * (0.6 if t >= 0.5 else 0.45 if t < 0.43 else 0.4)

    checked = correct(lambda t: t, lambda t: t, board, 0.5, lambda dense_ms: 0.5 * dense_ms, 3)
    measured = [r.measured_ms for r in checked.rounds]
    assert all(r.met for r in checked.rounds[1:]) and measured[2] > measured[1]
    assert checked.chosen == 1  # 0.45 of its dense model beats 0.40 of its own, though 0.45 ms < 0.60 ms
    assert [r.timings for r in checked.rounds] == [1, 1, 2]


def test_a_round_whose_dense_model_timed_in_a_slow_spell_is_timed_again():
    dense = itertools.chain([1.5], itertools.repeat(1.0))  # only the first timing of the dense model is slow

    checked = correct(
        lambda t: t, lambda t: t, lambda t: (next(dense), 1.2 * t), 0.5, lambda dense_ms: 0.5 * dense_ms, 3
    )
    first = checked.rounds[0]
    assert first.timings == 2 and first.dense_ms == 1.0 and not first.met  # 0.6 of dense, not the 0.4 it first seemed
    assert checked.rounds[-1].met and checked.chosen == len(checked.rounds) - 1
    assert checked.rounds[-1].target_ms < first.target_ms


def test_a_plan_that_lands_under_its_goal_is_timed_again_before_it_is_kept():
    dense = itertools.chain([1.08], itertools.repeat(1.0))  # the first timing of the dense model is 8 % slow

    checked = correct(
        lambda t: t, lambda t: t, lambda t: (next(dense), 1.04 * t), 0.5, lambda dense_ms: 0.5 * dense_ms, 3
    )
    first, second = checked.rounds
    assert first.timings == 2 and first.goal_ms == 0.5 and not first.met  # 0.52 ms: under 0.54, not under 0.5
    assert second.target_ms == pytest.approx(0.5 * 0.5 / 0.52) and second.met and second.timings == 2
    assert checked.chosen == 1


def test_a_corrected_target_out_of_reach_ends_the_rounds():
    def plan_at(t):
        if t < 0.45:
            raise PruneError("budget: out of reach")
        return t

    checked = correct(plan_at, lambda t: t, lambda t: (1.0, 1.3 * t), 0.5, lambda dense_ms: 0.5 * dense_ms, 3)
    assert len(checked.rounds) == 1 and not checked.record("b")["met"]
    with pytest.raises(PruneError, match="out of reach"):
        correct(plan_at, lambda t: t, lambda t: (1.0, t), 0.4, lambda dense_ms: 0.5 * dense_ms, 3)


def test_rounds_must_be_positive():
    with pytest.raises(PruneError, match="board rounds"):
        _loop(lambda t: t, rounds=0)
