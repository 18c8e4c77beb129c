import numpy as np
import pandas as pd
import pytest

from hwloop.layers import LayerConfig
from hwloop.pace import anchors, paced, spell_paces, spells
from hwloop.predictor.selection import select

START = pd.Timestamp("2026-01-05 09:00", tz="UTC")


def _config(c: int) -> LayerConfig:
    return LayerConfig("conv2d", 8, c, 8, 8, kernel=3, padding=1)


def _rows(channels, pace: float, minutes: float, board: str = "b0") -> pd.DataFrame:
    """Successful rows, one per channel count, a second apart from ``minutes`` after START; each
    config's latency is its level (its channel count / 100 ms) times ``pace``."""
    configs = [_config(c) for c in channels]
    return pd.DataFrame({
        **{k: [c.to_dict()[k] for c in configs] for k in configs[0].to_dict()},
        "config_id": [c.id for c in configs], "device": "local", "status": "ok", "schedule": "default",
        "protocol_id": "p", "protocol": "{}", "target": "{}", "latency_cv": 0.01,
        "latency_ms": [pace * c / 100 for c in channels],
        "measured_at": [START + pd.Timedelta(minutes=minutes, seconds=i) for i in range(len(configs))],
        "measurement_id": [f"{board}-{minutes}-{c}" for c in channels], "fp_id": board,
    })


def _table() -> pd.DataFrame:
    """A first sweep of 40 configs; a day later a sweep at pace 0.85 re-measuring 6 of them, one in
    a disturbance (twice as slow); a sweep at 1.2 linked only through the second; a sweep sharing
    nothing."""
    first = _rows(range(1, 41), 1.0, 0)
    second = _rows([*range(2, 40, 7), *range(41, 61)], 0.85, 24 * 60)
    second.loc[second.config_id == _config(9).id, "latency_ms"] *= 2
    third = _rows([41, 45, 50, 55, *range(61, 71)], 1.2, 48 * 60)
    alone = _rows(range(71, 81), 1.1, 72 * 60)
    return pd.concat([first, second, third, alone], ignore_index=True)


def test_each_spell_is_brought_to_the_pace_of_the_largest_through_the_configs_they_share():
    rows, summary = paced(_table())
    assert summary.configs.tolist() == [40, 26, 14, 10]
    assert summary.shared.tolist() == [6, 10, 4, 0]
    assert np.allclose(summary.pace.iloc[:3], [1.0, 0.85, 1.2]) and np.isnan(summary.pace.iloc[3])
    level = rows.out_channels / 100
    undisturbed = ~((rows.config_id == _config(9).id) & (rows.pace != 1.0))
    linked = rows.out_channels <= 70
    assert np.allclose(rows.latency_ms[undisturbed & linked], level[undisturbed & linked])
    assert np.allclose(rows.latency_ms[~linked], 1.1 * level[~linked])


def test_the_predictor_learns_paced_rows_and_lists_the_spells():
    selection = select(_table(), "t", "default")
    chosen = selection.rows.set_index("config_id").latency_ms
    assert chosen[_config(50).id] == pytest.approx(0.5) and chosen[_config(65).id] == pytest.approx(0.65)
    assert selection.spells.pace.iloc[1] == pytest.approx(0.85)


def test_boards_of_one_device_are_paced_against_each_other():
    rows = pd.concat([_rows(range(1, 9), 1.0, 0), _rows(range(1, 5), 1.3, 0.5, board="b1")], ignore_index=True)
    assert spells(rows).tolist() == [1] * 8 + [2] * 4
    assert spell_paces(rows.assign(spell=spells(rows))).pace.tolist() == pytest.approx([1.0, 1.3])


def test_anchors_spread_over_the_latency_range_and_keep_to_configs_timed_again():
    table = _table()
    chosen = anchors(table, count=4)
    channels = [c.out_channels for c in chosen]
    assert len(set(channels)) == 4 and channels == sorted(channels) and channels[0] <= 20 and channels[-1] > 60
    shared = set(table.config_id[table.config_id.duplicated()])
    assert [c.id in shared for c in chosen] == [True, True, True, False]  # the top bin has none timed twice

    again = pd.concat([table, _rows(channels, 0.9, 96 * 60)], ignore_index=True)
    assert anchors(again, count=4) == chosen
    assert anchors(table.iloc[:0]) == [] and len(anchors(table.iloc[:3], count=12)) == 3
