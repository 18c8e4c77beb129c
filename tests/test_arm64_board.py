"""The emulated aarch64 board behind a real sshd, registered like any board: `hwloop collect`'s board
path cross-compiles layers for it, and they run and match torch there."""

import json

import pytest
import yaml

from hwloop import tables
from hwloop.fleet import collect_fleet
from hwloop.kernels import tolerance
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

PI4 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 1}
CONFIGS = [
    LayerConfig("conv2d", 13, 19, 10, 10, kernel=3, padding=1),
    LayerConfig("conv2d", 6, 10, 11, 11, kernel=3, stride=2, padding=1),
    LayerConfig("depthwise_conv2d", 12, 12, 8, 8, kernel=3, padding=1, groups=12),
]


@pytest.mark.slow
def test_collect_on_the_emulated_board_over_ssh(boards, user_key, arm64_python, tmp_path, cache_dir):
    board = boards()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(board.known_hosts_line())
    fields = board.device(
        "pi-emulated", user_key, known_hosts, python=str(arm64_python), cc="aarch64-linux-gnu-gcc", target=PI4
    )
    fields["link"] |= {"start_timeout": 300, "stall_timeout": 300}  # emulation is slow, not hung
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "boards.yaml").write_text(yaml.safe_dump({"devices": {"pi-emulated": fields}}))
    device = load_registry(registry).get("pi-emulated")

    (run,) = collect_fleet([device], CONFIGS, parse_policy("default"), tmp_path / "tables", cache_dir)

    table = tables.read(tmp_path / "tables", "pi-emulated")
    assert run.summary.measured == len(CONFIGS), table.error.tolist()
    assert sorted(table.config_id) == sorted(c.id for c in CONFIGS)
    assert (table.status == "ok").all()
    assert (table.check_error <= tolerance(CONFIGS[0])).all()  # float32 layers, checked against torch
    assert (table.fp_arch == "aarch64").all()  # fingerprinted by the board's own (emulated) Python
    assert json.loads(table.target.iloc[0])["mtriple"] == "aarch64-linux-gnu"
