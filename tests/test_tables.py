import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hwloop import tables


def _row(config_id: str, latency: float | None = 1.0, status: str = "ok") -> dict:
    return {"measurement_id": tables.new_measurement_id(), "config_id": config_id, "device": "dev",
            "op": "conv2d", "in_channels": 8, "status": status, "latency_ms": latency, "latencies_ms": [latency or 0.0],
            "schedule": "untuned", "measured_at": pd.Timestamp.now(tz="UTC")}


def test_append_is_readable_by_pandas_directly(tmp_path):
    tables.append(tmp_path, "dev", [_row("a")])
    tables.append(tmp_path, "dev", [_row("b", None, "failed")])
    frame = pd.read_parquet(tmp_path / "dev")
    assert sorted(frame.config_id) == ["a", "b"]
    assert list(frame.columns) == tables.COLUMNS
    assert tables.devices(tmp_path) == ["dev"]


def test_read_of_missing_table_is_empty_with_schema(tmp_path):
    frame = tables.read(tmp_path, "nothing")
    assert frame.empty and list(frame.columns) == tables.COLUMNS


def test_compact_keeps_every_row_once(tmp_path):
    for name in "abc":
        tables.append(tmp_path, "dev", [_row(name)])
    before = tables.read(tmp_path, "dev")
    merged = tables.compact(tmp_path, "dev")
    assert tables.parts(tmp_path, "dev") == [merged]
    after = tables.read(tmp_path, "dev")
    assert sorted(after.measurement_id) == sorted(before.measurement_id)


def test_compaction_killed_before_removing_sources_leaves_no_duplicate(tmp_path):
    for name in "ab":
        tables.append(tmp_path, "dev", [_row(name)])
    merged = tables.read(tmp_path, "dev")
    pq.write_table(pa.Table.from_pandas(merged, schema=tables.SCHEMA, preserve_index=False),
                   tmp_path / "dev" / "part-99999999T000000000000-compact.parquet")
    assert len(tables.read(tmp_path, "dev")) == 2


def test_corrupt_part_is_named_and_nothing_is_lost(tmp_path):
    good = tables.append(tmp_path, "dev", [_row("a")])
    bad = tmp_path / "dev" / "part-20000101T000000000000-bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(tables.TableError, match=bad.name):
        tables.read(tmp_path, "dev")
    assert good.exists() and bad.exists()
    bad.unlink()
    assert list(tables.read(tmp_path, "dev").config_id) == ["a"]


def test_foreign_parquet_is_refused(tmp_path):
    (tmp_path / "dev").mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "dev" / "part-x.parquet")
    with pytest.raises(tables.TableError, match="missing columns"):
        tables.read(tmp_path, "dev")
