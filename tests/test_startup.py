"""What a command loads before it works: planning a collection of a space file needs neither torch
nor TVM (the host CPU's LLVM name is kept under the cache), so `collect` starts at once."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from hwloop import tables
from hwloop.trust import agreement

SPACE = "layers:\n  - {op: conv2d, in_channels: [4, 8], out_channels: 8, input_hw: 8, kernel: 3}\n"
HOST_CPU = "import sys; from hwloop.targets import host_cpu; print(host_cpu(), 'tvm' in sys.modules)"
PLAN = """import sys
from hwloop.cli import main
sys.argv = ["hwloop", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    assert not exit.code, exit.code
print(sorted(name for name in ("torch", "tvm", "tvm_ffi") if name in sys.modules))
"""


def _python(code: str, *args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_planning_a_space_file_imports_neither_torch_nor_tvm(tmp_path):
    cache, registry = tmp_path / "cache", tmp_path / "registry"
    registry.mkdir()
    env = dict(os.environ, HWLOOP_CACHE=str(cache), HWLOOP_REGISTRY=str(registry))
    (tmp_path / "space.yaml").write_text(SPACE)
    cpu, started_tvm = _python(HOST_CPU, env=env).split()
    assert started_tvm == "True"  # named by TVM's LLVM the first time, then kept
    assert list(json.loads((cache / "host-cpu.json").read_text()).values()) == [cpu]
    plan = ["collect", "-d", "local", "--space", str(tmp_path / "space.yaml"), "--dry-run", "--json"]
    printed, loaded = _python(PLAN, *plan, "--tables", str(tmp_path / "tables"), env=env).strip().rsplit("\n", 1)
    assert json.loads(printed)[0]["to_measure"] == 2
    assert loaded == "[]"
    (cache / "host-cpu.json").write_text("{not json")  # unreadable: named again, and kept again
    assert _python(HOST_CPU, env=env).split() == [cpu, "True"]
    assert list(json.loads((cache / "host-cpu.json").read_text()).values()) == [cpu]


def test_tables_show_summarises_without_pandas(tmp_path):
    rows = [
        ("conv2d", "c1", "ok", 1.0, [1.0, 1.01, 0.99], True, 0, 0.012),
        ("conv2d", "c1", "ok", 2.0, [2.0, 2.14, 1.94], True, 1, 0.010),
        ("conv2d", "c2", "ok", 4.0, [6.0, 4.0, 4.04, 3.96, 2.0], False, 2, None),
        ("conv2d", "c3", "failed", None, [9.0], True, 5, 0.050),
        ("linear", "l1", "ok", 0.5, None, None, None, None),
    ]
    columns = ["op", "config_id", "status", "latency_ms", "trial_latencies_ms", "quiet", "disturbed", "sentinel_ms"]
    frame = pd.DataFrame(rows, columns=columns)
    tables.append(
        tmp_path,
        "dev",
        [
            {**dict(zip(columns, row)), "measurement_id": tables.new_measurement_id(), "device": "dev", "schedule": "x"}
            for row in rows
        ],
    )
    code = PLAN.replace('("torch", "tvm", "tvm_ffi")', '("pandas",)')
    printed, loaded = (
        _python(code, "tables", "show", "--tables", str(tmp_path), "--json", env=dict(os.environ))
        .strip()
        .rsplit("\n", 1)
    )
    assert loaded.strip() == "[]"
    shown = {record["op"]: record for record in json.loads(printed)}
    for op, rows in frame.groupby("op"):
        ok = rows[rows.status == "ok"]
        assert shown[op]["rows"] == len(rows) and shown[op]["failed"] == len(rows) - len(ok)
        assert shown[op]["configs"] == ok.config_id.nunique()
        assert shown[op]["median_ms"] == pytest.approx(ok.latency_ms.median())
        assert shown[op]["trials"] == pytest.approx(agreement(rows))
    assert shown["conv2d"]["sentinel_ms"] == [0.010, 0.012]  # of the successful rows that timed it
    assert shown["linear"]["sentinel_ms"] is None


@pytest.mark.parametrize("chosen", [None, "jemalloc"])
def test_hwloop_allocates_arrow_memory_from_the_system_allocator_unless_told_otherwise(chosen):
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    code = "import hwloop\nimport pyarrow\nprint(pyarrow.default_memory_pool().backend_name)"
    assert _python(code, env=env).split()[-1] == (chosen or "system")
