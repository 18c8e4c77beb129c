import numpy as np
import pytest

from hwloop import tables
from hwloop.collect import collect, unsettled_rows
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

SPACE = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in (4, 7)] + [
    LayerConfig("depthwise_conv2d", 6, 6, 8, 8, kernel=3, padding=1, groups=6),
    LayerConfig("linear", 32, 5),
]


def test_collect_measures_each_config_once_and_resumes(registry_dir, cache_dir, tmp_path):
    device = load_registry(registry_dir).get("local")
    policy = parse_policy("untuned")
    first = collect(device, SPACE + SPACE[:1], policy, tmp_path, cache_dir)
    assert (first.planned, first.skipped, first.measured, first.failed) == (4, 0, 4, 0)

    table = tables.read(tmp_path, "local")
    assert sorted(table.config_id) == sorted(c.id for c in SPACE)
    row = table.iloc[0]
    assert row.status == "ok" and row.latency_ms > 0 and row.repeats == 3 * row.trials
    assert row.trials == len(row.trial_latencies_ms) >= device.protocol.trials and row.quiet
    assert row.latency_ms == pytest.approx(float(np.mean(row.trial_latencies_ms)))  # fewer than 5 trials: their mean
    repeats = np.reshape(row.latencies_ms, (row.trials, -1))
    assert list(row.trial_latencies_ms) == pytest.approx(repeats.min(axis=1))  # each trial's fastest repeat
    assert row.estimator == "trimmed-mean-of-trial-minima"
    assert row.schedule == "untuned" and '"kind":"llvm"' in row.target and row.tvm_version
    assert row.fp_id and row.fp_cores >= 1 and row.check_error <= 1e-4

    again = collect(device, SPACE, policy, tmp_path, cache_dir)
    assert (again.skipped, len(again.rows)) == (4, 0)

    forced = collect(device, SPACE[:2], policy, tmp_path, cache_dir, force=True)
    assert forced.measured == 2
    assert len(tables.read(tmp_path, "local")) == 6


def test_failures_are_rows_and_a_rerun_retries_them(registry_dir, cache_dir, tmp_path):
    device = load_registry(registry_dir).get("broken-cc")
    policy = parse_policy("untuned")
    summary = collect(device, SPACE[:2], policy, tmp_path, cache_dir)
    assert (summary.measured, summary.failed) == (0, 2)
    table = tables.read(tmp_path, "broken-cc")
    assert set(table.status) == {"failed"} and set(table.stage) == {"build"}
    assert table.error.str.contains("cross-gcc").all()
    retry = collect(device, SPACE[:2], policy, tmp_path, cache_dir)
    assert retry.skipped == 0 and len(tables.read(tmp_path, "broken-cc")) == 4


def test_another_protocol_is_another_measurement(registry_dir, cache_dir, tmp_path):
    registry = load_registry(registry_dir)
    policy = parse_policy("untuned")
    collect(registry.get("local"), SPACE[:1], policy, tmp_path, cache_dir)
    other = registry.get("local").model_copy(update={"protocol": registry.get("broken-cc").protocol})
    summary = collect(other, SPACE[:1], policy, tmp_path, cache_dir)
    assert summary.skipped == 0 and summary.measured == 1


@pytest.mark.slow
def test_tuned_policy_is_built_in_the_pool_and_recorded(registry_dir, tmp_path):
    device = load_registry(registry_dir).get("local")
    summary = collect(device, SPACE[:1], parse_policy("tuned:4"), tmp_path / "tables", tmp_path / "cache")
    assert summary.measured == 1, summary.rows[0]["error"]
    row = tables.read(tmp_path / "tables", "local").iloc[0]
    assert row.schedule == "tuned:4" and row.check_error <= 1e-4
    assert any((tmp_path / "cache" / "metaschedule" / "4").rglob("*.json"))


def test_passes_sweep_every_config_again_and_resume_the_missing_ones(registry_dir, cache_dir, tmp_path):
    single = load_registry(registry_dir).get("local")
    double = single.model_copy(update={"protocol": single.protocol.model_copy(update={"passes": 2})})
    policy = parse_policy("untuned")
    collect(single, SPACE[:3], policy, tmp_path, cache_dir)

    summary = collect(double, SPACE[:4], policy, tmp_path, cache_dir)
    assert (summary.planned, summary.skipped, summary.measured) == (8, 3, 5)
    assert [r["config_id"] for r in summary.rows] == [SPACE[3].id] + [c.id for c in SPACE[:4]]
    table = tables.read(tmp_path, "local")
    assert table.config_id.value_counts().to_dict() == {c.id: 2 for c in SPACE[:4]}
    assert table.protocol_id.nunique() == 1 and '"passes"' not in table.protocol.iloc[0]
    assert collect(double, SPACE[:4], policy, tmp_path, cache_dir).rows == []


def test_a_row_timed_on_a_busy_device_is_measured_again(registry_dir, cache_dir, tmp_path):
    device = load_registry(registry_dir).get("local")
    policy = parse_policy("untuned")
    collect(device, SPACE[:2], policy, tmp_path, cache_dir)
    rows = tables.read(tmp_path, "local")
    busy = rows[rows.config_id == SPACE[0].id].assign(quiet=False, measurement_id=tables.new_measurement_id())
    busy = busy.astype(object).where(busy.notna(), None).iloc[0].to_dict()  # pandas' NaN back to null
    with tables.Writer(tmp_path, "local") as writer:  # as if the first measurement had been disturbed throughout
        writer.write(busy)
    again = collect(device, SPACE[:2], policy, tmp_path, cache_dir)
    assert again.skipped == 2  # each config has a quiet row
    only_busy = tmp_path / "busy"
    tables.append(only_busy, "local", [busy])
    retaken = collect(device, SPACE[:2], policy, only_busy, cache_dir)
    assert (retaken.skipped, [r["config_id"] for r in retaken.rows]) == (0, [SPACE[0].id, SPACE[1].id])


def test_a_flushing_protocol_times_layers_with_cold_weights(registry_dir, cache_dir, tmp_path):
    warm = load_registry(registry_dir).get("local")
    cold = warm.model_copy(
        update={"protocol": warm.protocol.model_copy(update={"flush": True, "number": 1, "min_repeat_ms": 0})}
    )
    layer = [LayerConfig("linear", 512, 512)]  # 1 MiB of weights: read from memory when flushed, from cache when not
    policy = parse_policy("default")
    collect(warm, layer, policy, tmp_path, cache_dir)
    assert collect(cold, layer, policy, tmp_path, cache_dir).measured == 1  # another protocol, another measurement
    rows = tables.read(tmp_path, "local").set_index("protocol_id")
    assert len(rows) == 2
    warm_row, cold_row = sorted((r for _, r in rows.iterrows()), key=lambda r: '"flush":true' in r.protocol)
    assert '"flush"' not in warm_row.protocol and '"flush":true' in cold_row.protocol
    assert cold_row.latency_ms > 1.3 * warm_row.latency_ms


def test_a_median_protocol_keeps_the_protocol_id_tables_had_before_the_statistic(registry_dir):
    from hwloop.rows import Context

    fastest = load_registry(registry_dir).get("local")
    median = fastest.model_copy(update={"protocol": fastest.protocol.model_copy(update={"statistic": "median"})})
    policy = parse_policy("default")
    assert '"statistic":"min"' in Context.of(fastest, policy).protocol
    assert '"statistic"' not in Context.of(median, policy).protocol  # the protocol as rows recorded it before
    assert Context.of(fastest, policy).protocol_id != Context.of(median, policy).protocol_id


def test_a_protocol_with_a_sentinel_times_it_built_for_the_device_s_target(registry_dir, cache_dir, tmp_path):
    from hwloop.builder import BuildJob, tvm_version
    from hwloop.rows import Context
    from hwloop.runner import SENTINEL
    from hwloop.session import Session

    plain = load_registry(registry_dir).get("local")
    device = plain.model_copy(update={"protocol": plain.protocol.model_copy(update={"sentinel": 1.5})})
    policy = parse_policy("untuned")
    assert Context.of(device, policy).protocol_id == Context.of(plain, policy).protocol_id  # the same measurement
    with Session(device, policy, tmp_path, cache_dir=cache_dir) as session:
        session.open()
        job = BuildJob(SENTINEL, session.context.target, "default")
        assert session.runner.sentinel == str(cache_dir / "builds" / f"{job.key(tvm_version())}.so")
        assert session.runner.sentinel_readings.fastest is None  # an empty table
    summary = collect(device, SPACE[:2], policy, tmp_path, cache_dir)
    assert summary.measured == 2 and all(row["status"] == "ok" for row in summary.rows)
    recorded = tables.read(tmp_path, "local").sentinel_ms
    assert recorded.notna().all() and (recorded > 0).all()
    with Session(device, policy, tmp_path, cache_dir=cache_dir) as session:
        session.open()
        assert session.runner.sentinel_readings.fastest == recorded.min()  # a later session starts from the table's


def test_the_default_rules_padded_repacks_run_on_the_device(registry_dir, cache_dir, tmp_path):
    padded = [
        LayerConfig("conv2d", 40, 8, 14, 14, kernel=3, padding=1),  # one tile, half of it padding
        LayerConfig("conv2d", 24, 200, 4, 4, kernel=3, padding=1),  # full tiles, then a padded one
    ]
    summary = collect(load_registry(registry_dir).get("local"), padded, parse_policy("default"), tmp_path, cache_dir)
    assert summary.failed == 0, [row.get("error") for row in summary.rows]
    assert (tables.read(tmp_path, "local").check_error <= 1e-4).all()


def test_rows_timed_on_a_busy_device_or_with_trials_that_disagree_are_taken_again_at_the_end():
    def row(status="ok", latency=1.0, trials=(1.0, 1.02, 0.99), quiet=True, sentinel=0.01):
        return {
            "status": status,
            "latency_ms": latency,
            "trial_latencies_ms": list(trials),
            "quiet": quiet,
            "sentinel_ms": sentinel,
        }

    rows = [
        row(),
        row(quiet=False),
        row(trials=(1.0, 1.3, 0.9)),
        row(status="failed", latency=None, trials=(), quiet=None),
        row(trials=(1.0, 1.05, 0.95)),
    ]
    assert unsettled_rows(rows) == [1, 2]
    assert unsettled_rows(rows, scattered=False) == [1]
    assert unsettled_rows([]) == []
    rows += [row(sentinel=0.018), row(sentinel=None)]  # the sentinel slow around its trials; no sentinel
    assert unsettled_rows(rows, sentinel=1.25) == [1, 2, 5]
    assert unsettled_rows(rows) == [1, 2]
