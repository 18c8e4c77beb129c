import pandas as pd

from hwloop.trust import agreement, disagree, warning


def _rows(*rows):
    return pd.DataFrame(rows, columns=["status", "latency_ms", "trial_latencies_ms", "quiet", "disturbed"])


def test_agreement_counts_the_trials_a_latency_is_made_from():
    rows = _rows(
        ("ok", 1.0, [1.0, 1.01, 0.99], True, 0),  # within ±5 %
        ("ok", 1.0, [1.0, 1.07, 0.97], True, 1),  # within ±10 % only
        ("ok", 1.0, [1.5, 1.0, 1.01, 0.99, 0.5], False, 2),  # five trials: the fastest and slowest left out
        ("ok", 1.0, [1.0, 1.2, 1.0, 1.0], True, 0),  # four: every trial counts
        ("ok", 1.0, None, None, None),  # no trials (an older row): not counted
        ("failed", None, [9.0], True, 5),  # failed: not counted
    )
    record = agreement(rows)
    assert record == {"measured": 4, "within_5": 0.5, "within_10": 0.75, "quiet": 0.75, "disturbed": 3}
    assert warning({**record, "within_10": 0.5})  # two of four disagree
    assert warning({**record, "measured": 100, "within_10": 0.95}) is None
    assert "only 94.7% of its measurements" in warning({**record, "measured": 38, "within_10": 36 / 38})  # never 95%


def test_one_measurement_that_disagrees_does_not_make_a_small_table_too_noisy():
    record = {"measured": 19, "within_5": 0.5, "quiet": 1.0, "disturbed": 0}
    assert warning({**record, "within_10": 18 / 19}) is None
    assert warning({**record, "within_10": 17 / 19})
    assert warning({**record, "measured": 4, "within_10": 0.75}) is None


def test_rows_without_trials_measure_nothing():
    assert agreement(_rows(("ok", 1.0, None, None, None))) == {"measured": 0}
    assert agreement(_rows()) == {"measured": 0}
    assert warning({"measured": 0}) is None


def test_the_rows_whose_trials_disagree_by_more_than_a_tenth_are_named():
    rows = _rows(
        ("ok", 1.0, [1.0, 1.07, 0.97], True, 0),  # within ±10 %
        ("ok", 1.0, [1.0, 1.2, 1.0], True, 0),
        ("ok", 1.0, [1.5, 1.0, 1.01, 0.99, 0.5], True, 0),  # the fastest and slowest left out
        ("ok", 1.0, [1.5, 1.5, 1.0, 1.0, 1.0], False, 0),
        ("ok", 1.0, None, None, None),  # no trials: nothing to disagree
        ("failed", None, [9.0, 1.0], True, 0),
    )
    assert disagree(rows).tolist() == [False, True, False, True, False, False]
