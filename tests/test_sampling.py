import json

import pytest
from typer.testing import CliRunner

from hwloop import tables
from hwloop.cli import app
from hwloop.layers import LayerConfig
from hwloop.predictor.evaluation import splits
from hwloop.predictor.features import shape_key
from hwloop.predictor.latency import vector_unit
from hwloop.predictor.sampling import at_step, choose, frame_of, initial_design, learning_curve

POOL = [LayerConfig("conv2d", 8, c, 8, 8, kernel=3, padding=1) for c in range(4, 41)] + [
    LayerConfig("linear", 32, c) for c in range(8, 41)
]


UNITS = [(4, 32), (8, 16), (16, 32)]  # float32 lanes and vector registers: NEON, AVX2, AVX-512


@pytest.mark.parametrize(("lanes", "registers"), UNITS)
def test_steps_are_where_another_vector_opens(lanes, registers):
    """A 3x3 conv's output channels run in whole vectors: lanes and lanes + 1 channels sit at a
    step, a count inside a vector does not; a depthwise conv vectorises its width, so its channel
    counts make no steps."""
    convs = frame_of([LayerConfig("conv2d", 8, c, 8, 8, kernel=3, padding=1) for c in (lanes, lanes + 1, lanes + 2)])
    assert at_step(convs, lanes, registers).tolist() == [True, True, False]
    depthwise = frame_of(
        [LayerConfig("depthwise_conv2d", c, c, 14, 14, kernel=3, padding=1, groups=c) for c in (lanes, lanes + 1)]
    )
    assert not at_step(depthwise, lanes, registers).any()


@pytest.mark.parametrize(("lanes", "registers"), UNITS)
def test_first_design_covers_every_shape_with_step_counts_first(lanes, registers):
    pool = frame_of(POOL)
    design = initial_design(pool, 8, lanes, registers)
    assert len(design) == 8 and set(shape_key(design)) == set(shape_key(pool))
    assert at_step(design, lanes, registers).all()


def measured_rows(tables_dir):
    """The table's successful rows, one per config."""
    rows = tables.read(tables_dir, "local")
    return rows[rows.status == "ok"].drop_duplicates("config_id").reset_index(drop=True)


def test_choose_picks_unmeasured_candidates_where_the_ensemble_is_unsure(local_table):
    rows = measured_rows(local_table)
    measured = rows.iloc[::2].reset_index(drop=True)
    picks = choose(rows, measured, 10)
    assert len(picks) == 10 and not picks.config_id.isin(measured.config_id).any()
    assert picks.config_id.is_unique


def test_learning_curve_grows_and_scores_the_held_out_rows(local_table):
    rows = measured_rows(local_table)
    test = splits(rows)["config"]
    for adaptive in (False, True):
        curve = learning_curve(rows, test, [12, 24, 36], adaptive)
        assert [point["samples"] for point in curve] == [12, 24, 36]
        assert all(point["rows"] == test.sum() and 0 <= point["within_10"] <= 1 for point in curve)


def test_collect_adaptive_spends_its_budget_in_rounds(registry_dir, cache_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("layers:\n  - {op: linear, in_channels: 40, out_channels: {start: 4, stop: 41, step: 1}}\n")
    result = CliRunner().invoke(
        app,
        [
            str(a)
            for a in (
                "collect",
                "-d",
                "local",
                "--space",
                space,
                "--adaptive",
                "--budget",
                12,
                "--registry",
                registry_dir,
                "--tables",
                tmp_path / "tables",
                "--cache",
                cache_dir,
                "--json",
            )
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    table = tables.read(tmp_path / "tables", "local")
    assert record["measured"] + record["failed"] == 12 == len(table)
    assert set(table.in_channels) == {40} and table.config_id.is_unique
    unit = vector_unit(table.target.iloc[0])  # of the target the table was built for, not of this machine
    assert at_step(table, *unit).sum() >= 6
    again = CliRunner().invoke(
        app, [str(a) for a in ("collect", "-d", "local", "--space", space, "--adaptive", "--registry", registry_dir)]
    )
    assert again.exit_code == 2 and "--budget" in again.stderr
