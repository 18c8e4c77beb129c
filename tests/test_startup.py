"""What a command loads before it works: planning a collection of a space file needs neither torch
nor TVM (the host CPU's LLVM name is kept under the cache), so `collect` starts at once."""

import json
import os
import subprocess
import sys

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
