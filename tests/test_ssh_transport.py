import pytest

from hwloop.builder import BuildJob, build
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.runner import Runner
from hwloop.transports import TransportError, open_transport
from hwloop.transports.sshlink import HostKeyError

from boards import write_registry

CONV = LayerConfig("conv2d", 4, 4, 8, 8, kernel=3, padding=1)


def registry(tmp_path, devices):
    return load_registry(write_registry(tmp_path / "registry", devices))


def test_measures_on_a_board_and_cleans_up(boards, user_key, tmp_path, host_target, cache_dir):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    device = registry(tmp_path, {"b1": board.device("b1", user_key, known)}).get("b1")
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    with open_transport(device) as transport:
        m = Runner(transport, device.protocol).measure(CONV, built.artifact)
        assert m.status == "ok", m.error
        fp = transport.fingerprint()
        assert fp["cores"] >= 1 and len(fp["id"]) == 12
        workdir = transport.workdir
        assert (board.root / "work" / "b1").is_dir()
    assert not (board.root / "work" / "b1").exists()
