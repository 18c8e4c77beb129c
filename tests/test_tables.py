import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hwloop import tables


def _row(config_id: str, latency: float | None = 1.0, status: str = "ok", schedule: str = "untuned") -> dict:
    return {
        "measurement_id": tables.new_measurement_id(),
        "config_id": config_id,
        "device": "dev",
        "op": "conv2d",
        "in_channels": 8,
        "status": status,
        "latency_ms": latency,
        "latencies_ms": [latency or 0.0],
        "schedule": schedule,
        "measured_at": pd.Timestamp.now(tz="UTC"),
    }


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
    assert list(tables.read(tmp_path, "nothing", columns=["config_id"]).columns) == ["config_id"]


def test_rows_are_read_while_a_run_writes_them_and_sealed_into_one_part(tmp_path):
    with tables.Writer(tmp_path, "dev") as writer:
        for name in "abc":
            writer.write(_row(name))
            assert name in set(tables.read(tmp_path, "dev").config_id)
        assert tables.parts(tmp_path, "dev") == []
    assert len(tables.parts(tmp_path, "dev")) == 1
    assert not list((tmp_path / "dev" / tables.JOURNAL).glob("*.arrows"))
    assert sorted(pd.read_parquet(tmp_path / "dev").config_id) == ["a", "b", "c"]


def test_columns_and_rows_are_selected(tmp_path):
    tables.append(tmp_path, "dev", [_row("a"), _row("b", schedule="default@2"), _row("c", None, "failed")])
    chosen = tables.read(tmp_path, "dev", columns=["config_id"], where={"status": "ok", "schedule": ["untuned"]})
    assert list(chosen.columns) == ["config_id"] and list(chosen.config_id) == ["a"]
    with pytest.raises(ValueError, match="unknown table column"):
        tables.read(tmp_path, "dev", columns=["nope"])


KILLED_RUN = """
import sys, pandas as pd
from hwloop import tables
writer = tables.Writer(sys.argv[1], "dev")
for i in range(3):
    writer.write({"measurement_id": tables.new_measurement_id(), "config_id": f"c{i}", "device": "dev",
                  "status": "ok", "latency_ms": 1.0, "measured_at": pd.Timestamp.now(tz="UTC")})
print(writer.path, flush=True)
sys.stdin.read()
"""


def test_a_killed_run_loses_nothing_written_and_its_journal_is_sealed_once(tmp_path):
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    journal = run.stdout.readline().strip()
    run.kill()
    run.wait()
    with open(journal, "ab") as f:  # the row in flight when it was killed, cut short
        f.write(b"\xff\xff\xff\xff\x10\x00\x00\x00garbage")
    assert sorted(tables.read(tmp_path, "dev").config_id) == ["c0", "c1", "c2"]
    tables.append(tmp_path, "dev", [_row("d")])  # the next run seals what the killed one left
    assert not list((tmp_path / "dev" / tables.JOURNAL).glob("*.arrows"))
    assert sorted(pd.read_parquet(tmp_path / "dev").config_id) == ["c0", "c1", "c2", "d"]


def test_many_runs_keep_few_files_and_every_row_once(tmp_path):
    for i in range(150):
        tables.append(tmp_path, "dev", [_row(f"c{i}")])
    assert len(tables.parts(tmp_path, "dev")) <= 3 * 4
    frame = tables.read(tmp_path, "dev")
    assert len(frame) == 150 and frame.measurement_id.is_unique


def test_a_table_of_one_file_per_row_is_merged_by_the_next_run(tmp_path):
    directory = tmp_path / "dev"
    directory.mkdir()
    for i in range(40):
        pq.write_table(pa.Table.from_pylist([_row(f"c{i}")], schema=tables.SCHEMA), directory / f"part-old-{i}.parquet")
    tables.append(tmp_path, "dev", [_row("new")])
    assert len(tables.parts(tmp_path, "dev")) < 4
    assert len(tables.read(tmp_path, "dev")) == 41


def test_compact_keeps_every_row_once(tmp_path):
    for name in "abc":
        tables.append(tmp_path, "dev", [_row(name)])
    before = tables.read(tmp_path, "dev")
    merged = tables.compact(tmp_path, "dev")
    assert tables.parts(tmp_path, "dev") == [merged]
    assert sorted(tables.read(tmp_path, "dev").measurement_id) == sorted(before.measurement_id)


def test_compaction_killed_before_removing_sources_leaves_no_duplicate(tmp_path):
    for name in "ab":
        tables.append(tmp_path, "dev", [_row(name)])
    merged = tables.read(tmp_path, "dev")
    pq.write_table(
        pa.Table.from_pandas(merged, schema=tables.SCHEMA, preserve_index=False),
        tmp_path / "dev" / "part-99999999T000000000000-compact.parquet",
    )
    assert len(tables.read(tmp_path, "dev")) == 2


def test_rows_of_an_older_hwloop_lack_newer_columns(tmp_path):
    (tmp_path / "dev").mkdir()
    old = pa.Table.from_pylist([_row("a")], schema=tables.SCHEMA).drop_columns(["latency_min_ms", "fp_power_mode"])
    pq.write_table(old, tmp_path / "dev" / "part-old.parquet")
    frame = tables.read(tmp_path, "dev")
    assert list(frame.columns) == tables.COLUMNS and frame.latency_min_ms.isna().all()


def test_corrupt_part_is_named_and_nothing_is_lost(tmp_path):
    tables.append(tmp_path, "dev", [_row("a")])
    bad = tmp_path / "dev" / "part-20000101T000000000000-bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(tables.TableError, match=bad.name):
        tables.read(tmp_path, "dev")
    bad.unlink()
    assert list(tables.read(tmp_path, "dev").config_id) == ["a"]


def test_foreign_parquet_is_refused(tmp_path):
    (tmp_path / "dev").mkdir()
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "dev" / "part-x.parquet")
    with pytest.raises(tables.TableError, match="missing columns"):
        tables.read(tmp_path, "dev")


def test_a_second_run_waits_for_the_table_and_is_told_who_holds_it(tmp_path):
    heard, order = [], []
    first = tables.Writer(tmp_path, "dev")
    first.write(_row("a"))

    def second():
        with tables.Writer(tmp_path, "dev", on_wait=heard.append) as writer:
            order.append("second")
            writer.write(_row("b"))

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 10
    while not heard and time.monotonic() < deadline:
        time.sleep(0.01)
    order.append("first")
    first.close()
    thread.join(10)
    assert order == ["first", "second"]
    assert heard and str(os.getpid()) in heard[0] and "waiting" in heard[0]
    assert sorted(tables.read(tmp_path, "dev").config_id) == ["a", "b"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs to fill")
def test_a_full_disk_stops_the_run_with_the_file_named_and_keeps_its_rows(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)], check=True)
    try:
        written = 0
        with pytest.raises(tables.TableError, match=r"_journal/.*cannot write a row \(No space left on device\)"):
            with tables.Writer(disk, "dev") as writer:
                for i in range(10000):
                    writer.write({**_row(f"c{i}"), "error": "x" * 200})
                    written += 1
        assert written > 10
        assert len(tables.read(disk, "dev")) == written
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_columns_read_as_numpy_keep_values_nulls_and_offsets():
    numbers = pa.chunked_array([pa.array([1.5, None, 3.0]), pa.array([4.0])]).slice(1)
    assert tables.values(numbers, fill=-1.0).tolist() == [-1.0, 3.0, 4.0]
    flags = pa.array([True, None, False, True, True, False, False, True, True]).slice(2)
    assert tables.values(flags, fill=True).tolist() == [False, True, True, False, False, True, True]
    when = pa.array([pd.Timestamp("2026-01-01", tz="UTC")], pa.timestamp("us", tz="UTC"))
    assert tables.values(when).tolist() == [int(pd.Timestamp("2026-01-01").value // 1000)]
    index, names = tables.codes(pa.chunked_array([pa.array(["ok", None]), pa.array(["failed", "ok"])]))
    assert [names[i] if i >= 0 else None for i in index] == ["ok", None, "failed", "ok"]
    assert tables.values(pa.chunked_array([], pa.int32())).dtype == "int32"
    with pytest.raises(TypeError, match="string"):
        tables.values(pa.array(["x"]))
