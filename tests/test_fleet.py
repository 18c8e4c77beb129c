"""Collections on several SSH test boards at once, with faults injected mid-collection."""

import contextlib
import json
import signal
import threading
import time

import psutil
import pytest
from boards import PYTHON, Proxy, write_registry
from typer.testing import CliRunner

from hwloop import collect as collect_module
from hwloop import tables
from hwloop.cli import app
from hwloop.fleet import collect_fleet
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

SPACE = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in range(2, 8)]
POLICY = parse_policy("untuned")
SPACE_YAML = """\
layers:
  - {op: conv2d, in_channels: 4, out_channels: {start: 2, stop: 8}, input_hw: 8, kernel: 3, stride: 1, groups: 1}
"""


def fleet(tmp_path, user_key, *boards, **overrides):
    """A registry with one device per board (``b0``, ``b1``, ...) and their known_hosts."""
    known = tmp_path / "known_hosts"
    known.write_text("".join(b.known_hosts_line() for b in boards))
    devices = {
        f"b{i}": {**b.device(f"b{i}", user_key, known), **overrides.get(f"b{i}", {})} for i, b in enumerate(boards)
    }
    return load_registry(write_registry(tmp_path / "registry", devices)), known


def assert_each_measured_once(tables_dir, names):
    for name in names:
        table = tables.read(tables_dir, name)
        counts = table[table.status == "ok"].config_id.value_counts()
        assert sorted(counts.index) == sorted(c.id for c in SPACE) and set(counts) == {1}, name


def in_background(*args, **kwargs):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("runs", collect_fleet(*args, **kwargs)))
    thread.start()
    return thread, box


def wait_rows(tables_dir, name, count, timeout=120):
    deadline = time.monotonic() + timeout
    while len(tables.read(tables_dir, name, columns=["config_id"])) < count:
        assert time.monotonic() < deadline, f"{name}: fewer than {count} rows in time"
        time.sleep(0.05)


def test_two_boards_in_parallel_then_a_rerun_measures_nothing(boards, user_key, tmp_path, cache_dir):
    pair = boards(), boards()
    # repeats of 50 ms: each board measures for seconds, longer than the workers' start may differ on a busy host
    slower = {"protocol": {**pair[0].device("b0", user_key, tmp_path)["protocol"], "min_repeat_ms": 50}}
    registry, _ = fleet(tmp_path, user_key, *pair, b0=slower, b1=slower)
    devices = registry.select(["b0", "b1"])
    started = {}
    runs = collect_fleet(
        devices,
        SPACE,
        POLICY,
        tmp_path / "tables",
        cache_dir,
        on_start=lambda name, total: started.setdefault(name, total),
    )
    assert started == {"b0": len(SPACE), "b1": len(SPACE)}
    assert [(r.summary.measured, r.summary.failed, r.error) for r in runs] == [(len(SPACE), 0, None)] * 2
    assert_each_measured_once(tmp_path / "tables", ["b0", "b1"])
    first = {name: tables.read(tmp_path / "tables", name) for name in ("b0", "b1")}
    assert first["b0"].fp_id.notna().all() and (first["b0"].latency_ms > 0).all()
    spans = [(t.measured_at.min(), t.measured_at.max()) for t in first.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], "the boards did not measure at the same time"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    args = [
        "collect",
        "-d",
        "b0",
        "-d",
        "b1",
        "--space",
        space,
        "--schedule",
        "untuned",
        "--registry",
        tmp_path / "registry",
        "--tables",
        tmp_path / "tables",
        "--cache",
        cache_dir,
        "--json",
    ]
    again = CliRunner().invoke(app, [str(a) for a in args])
    assert again.exit_code == 0, again.output
    records = json.loads(again.stdout)
    assert [(r["device"], r["skipped"], r["measured"], r["error"]) for r in records] == [
        ("b0", len(SPACE), 0, None),
        ("b1", len(SPACE), 0, None),
    ]


def test_rows_a_board_did_not_settle_are_taken_again_at_the_end(boards, user_key, tmp_path, cache_dir, monkeypatch):
    real = collect_module.unsettled_rows
    # the first row counts as unsettled too, as if its trials had disagreed
    monkeypatch.setattr(collect_module, "unsettled_rows", lambda rows, *how: sorted({0, *real(rows, *how)}))
    registry, _ = fleet(tmp_path, user_key, boards())
    started, seen = [], []
    [run] = collect_fleet(
        registry.select(["b0"]),
        SPACE[:3],
        POLICY,
        tmp_path / "tables",
        cache_dir,
        on_start=lambda name, total: started.append(total),
        on_row=lambda name, row: seen.append(row),
    )
    summary, first = run.summary, seen[0]["config_id"]
    assert run.error is None and summary.retaken >= 1 and started == [3, 3 + summary.retaken]
    assert len(seen) == 3 + summary.retaken and summary.measured == 3  # a retake replaces its row in the summary
    table = tables.read(tmp_path / "tables", "b0")
    assert len(table) == len(seen) and (table.config_id == first).sum() == 2  # the table keeps both
    latest = [row for row in seen if row["config_id"] == first][-1]
    assert [row["measurement_id"] for row in summary.rows if row["config_id"] == first] == [latest["measurement_id"]]


FAULTS = ["drop", "sshd-restart", "hung", "stall", "cut", "missing-module", "garbled-output"]
BROKEN_PYTHON = {
    "missing-module": '#!/bin/sh\nexec /usr/bin/python3 -I -S "$@"\n',
    "garbled-output": "#!/bin/sh\necho 'Welcome! \\x00\\xff'\necho '{\"port\": 90'\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_mid_collection_then_rerun_measures_each_config_once(fault, boards, user_key, tmp_path, cache_dir):
    victim, other = boards(), boards()
    proxy = Proxy(victim.address, victim.port) if fault in ("stall", "cut") else None
    overrides = {"b0": {"host": proxy.address, "port": proxy.port}} if proxy else {}
    python, healthy = tmp_path / "board-python", f'#!/bin/sh\nexec {PYTHON} "$@"\n'
    if fault in BROKEN_PYTHON:  # the board's python is a wrapper that breaks mid-collection
        python.write_text(healthy)
        python.chmod(0o755)
        overrides = {"b0": {"python": str(python)}}
    registry, known = fleet(tmp_path, user_key, victim, other, **overrides)
    if proxy:
        known.write_text(
            victim.known_hosts_line().replace(f"[{victim.address}]:{victim.port}", f"[{proxy.address}]:{proxy.port}")
            + other.known_hosts_line()
        )
    devices, tables_dir = registry.select(["b0", "b1"]), tmp_path / "tables"
    try:
        thread, box = in_background(devices, SPACE, POLICY, tables_dir, cache_dir)
        wait_rows(tables_dir, "b0", 2)
        if fault == "drop":
            victim.stop()
        elif fault == "sshd-restart":
            victim.restart()
        elif fault == "hung":
            stopped = victim.signal_sessions(signal.SIGSTOP)
            assert stopped
        elif fault == "stall":
            proxy.stall()
            threading.Timer(6, proxy.resume).start()
        elif fault == "cut":
            proxy.cut()
        elif fault in BROKEN_PYTHON:
            python.write_text(BROKEN_PYTHON[fault])
            victim.signal_sessions(signal.SIGKILL)
        thread.join(timeout=150)
        assert not thread.is_alive()
        runs = {r.summary.device: r for r in box["runs"]}
        assert runs["b1"].error is None and runs["b1"].summary.measured == len(SPACE)
        if fault == "drop":
            assert "reconnects failed" in runs["b0"].error and "cannot connect" in runs["b0"].error
        elif fault == "missing-module":
            assert "cannot import" in runs["b0"].error and "tvm" in runs["b0"].error
        elif fault == "garbled-output":
            assert "garbled answer" in runs["b0"].error
        elif fault != "stall":  # the board came back during the retries: the same run finished it
            assert runs["b0"].error is None and runs["b0"].summary.measured == len(SPACE)
        if fault in BROKEN_PYTHON:
            python.write_text(healthy)
        if fault == "hung":
            for process in stopped:
                with contextlib.suppress(psutil.NoSuchProcess):  # recovery may have killed it already
                    process.send_signal(signal.SIGCONT)
        if victim.process is None:
            victim.start()
        proxy and proxy.resume()

        rerun = collect_fleet(devices, SPACE, POLICY, tables_dir, cache_dir)
        assert all(r.error is None and r.summary.failed == 0 for r in rerun), [r.error for r in rerun]
        assert_each_measured_once(tables_dir, ["b0", "b1"])
    finally:
        if proxy:
            proxy.close()
