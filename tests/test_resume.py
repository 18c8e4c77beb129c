import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from hwloop import tables

SPACE = """\
layers:
  - op: conv2d
    in_channels: 8
    out_channels: {start: 4, stop: 16}
    input_hw: 12
    kernel: 3
    stride: 1
    groups: 1
"""


def _collect(registry_dir, space, tables_dir, cache):
    command = [
        sys.executable,
        "-m",
        "hwloop",
        "collect",
        "--device",
        "local",
        "--space",
        str(space),
        "--registry",
        str(registry_dir),
        "--tables",
        str(tables_dir),
        "--cache",
        str(cache),
        "--json",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_collect_resumes_with_every_config_measured_once(registry_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    tables_dir, cache = tmp_path / "tables", tmp_path / "cache"

    proc = _collect(registry_dir, space, tables_dir, cache)
    deadline = time.monotonic() + 240
    while len(tables.read(tables_dir, "local", columns=["config_id"])) < 4:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no measurement written in time"
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left running after the kill: {[p.cmdline() for p in alive]}"

    measured_before = set(tables.read(tables_dir, "local").config_id)
    assert 4 <= len(measured_before) < 12

    proc = _collect(registry_dir, space, tables_dir, cache)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == len(measured_before)
    assert summary["measured"] == 12 - len(measured_before)

    table = tables.read(tables_dir, "local")
    counts = table[table.status == "ok"].config_id.value_counts()
    assert len(counts) == 12 and set(counts) == {1}
