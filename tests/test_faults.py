"""A few cells of the fault matrix (tests/fault_matrix.py; bench/faults.py runs all of them): one per
kind of fault, spread over the ways hwloop measures. Each injects its fault into a run on real
OpenSSH boards on loopback, mends it, runs again, and finds every row kept and none measured twice."""

import os
import subprocess
import tempfile

import pytest
from fault_matrix import run_cell


@pytest.fixture
def cell(tmp_path, user_key, cache_dir, monkeypatch):
    """``cell(fault, path, **options)`` → the cell's record; ``$HOME`` is the test's own."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh").mkdir(parents=True)

    def run(fault, path, **options):
        record = run_cell(fault, path, tmp_path / "cell", cache_dir, user_key, **options)
        assert record["injected"], record
        assert (record["lost"], record["duplicated"]) == (0, 0), record
        return record

    return run


def completed(run: dict) -> bool:
    return run["kind"] == "completed" and not run["missing"]


def test_a_tracker_board_whose_sshd_was_killed_leaves_the_pool_and_its_measurement_is_retried(cell):
    record = cell("sshd-killed", "tracker")
    first, again = record["runs"]
    assert completed(first), record  # no failed row for the measurement in flight
    assert completed(again)


def test_a_hung_board_is_reconnected_while_models_are_measured(cell):
    record = cell("board-hung", "measure")
    first, again = record["runs"]
    assert completed(first) and first["after_fault"] > 0 and first["rows"] == 4, record
    assert completed(again) and again["rows"] == 0  # nothing left to measure


def test_a_stalled_link_is_reconnected_during_validation(cell):
    record = cell("link-stalled", "validate")
    first, again = record["runs"]
    assert completed(first) and first["after_fault"] > 0, record
    assert completed(again)


def test_a_board_away_longer_than_the_retries_is_given_up_and_a_rerun_completes(cell):
    record = cell("board-rebooted", "collect", reboot_s=20)
    first, again = record["runs"]
    assert first["kind"] == "given up" and first["reconnects"] == 4, record
    assert "b0" in first["missing"]
    assert completed(again) and again["rows"] == first["missing"]["b0"]


def test_a_hung_compiler_fails_the_whole_model_at_its_build_timeout(cell):
    record = cell("compiler-hung", "validate")
    first, again = record["runs"]
    assert first["kind"] == "failed rows" and first["failed"] == {"build": 1}, record
    assert "did not finish within" in first["failure"]
    assert completed(again)


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder], capture_output=True)
        return probe.returncode == 0 and subprocess.run(["umount", folder]).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount (the tables folder on a small tmpfs)")
def test_a_full_disk_stops_an_adaptive_collection_with_every_row_kept(cell):
    record = cell("disk-full", "adaptive")
    first, again = record["runs"]
    assert first["kind"] == "stopped" and "No space left on device" in first["error"], record
    assert first["rows"] >= 2 and completed(again)
