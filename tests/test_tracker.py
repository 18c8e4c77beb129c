"""A pool of two RPC servers behind a real TVM RPC tracker on loopback, measured as one device, with
bounded waits for a free board and for a session."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from boards import SHORT_PROTOCOL, start_tracker, write_registry

from hwloop import tables
from hwloop.fleet import collect_fleet
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.transports import TransportError, open_transport
from hwloop.transports.tracker import pool_size

SPACE = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in range(2, 8)]
# TVM's RPC server, without the torch that tvm_ffi imports eagerly (seconds saved)
RPC_SERVER = (
    "import runpy, sys; sys.modules['torch'] = None; runpy.run_module('tvm.exec.rpc_server', "
    "run_name='__main__', alter_sys=True)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracker(tmp_path):
    """A tracker with two RPC servers under the key ``pool``; every process killed by its group afterwards."""
    port = free_port()
    log = open(tmp_path / "tracker.log", "ab")
    started = [start_tracker(port, log)]
    try:
        for _ in range(2):
            server = free_port()
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        RPC_SERVER,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(server),
                        "--port-end",
                        str(server + 1),
                        "--tracker",
                        f"127.0.0.1:{port}",
                        "--key",
                        "pool",
                        "--silent",
                    ],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
        yield port
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_pool(device, size: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(TransportError):  # the tracker is still starting
            if pool_size(device) >= size:
                return
        assert time.monotonic() < deadline, "the RPC servers did not join the tracker"
        time.sleep(0.2)


def test_two_boards_under_one_key_share_one_sweep_and_bound_their_waits(tracker, tmp_path, cache_dir):
    fields = {
        "transport": "tracker",
        "host": "127.0.0.1",
        "port": tracker,
        "pool": "pool",
        "target": {"kind": "llvm", "mcpu": "host"},
        "protocol": SHORT_PROTOCOL,
    }
    registry = load_registry(
        write_registry(
            tmp_path / "registry",
            {
                "pool": fields,
                "empty": {**fields, "pool": "none"},
                "impatient": {**fields, "link": {"start_timeout": 1}},
                "brief": {**fields, "link": {"session_timeout": 2}},
            },
        )
    )
    device = registry.get("pool")
    wait_pool(device, 2)
    with pytest.raises(TransportError, match="no RPC server under key 'none'.*--key none"):
        open_transport(registry.get("empty"))

    (run,) = collect_fleet([device], SPACE, parse_policy("untuned"), tmp_path / "tables", cache_dir)
    assert run.workers == 2 and run.error is None and run.summary.measured == len(SPACE)
    table = tables.read(tmp_path / "tables", "pool")
    counts = table[table.status == "ok"].config_id.value_counts()
    assert sorted(counts.index) == sorted(c.id for c in SPACE) and set(counts) == {1}

    with (
        open_transport(device) as first,
        open_transport(device) as second,
        open_transport(registry.get("impatient")) as third,
    ):
        held = [first.connect(), second.connect()]  # every board of the pool
        with pytest.raises(TransportError, match="no board of pool 'pool' became free within 1 s"):
            third.connect()
        assert "became free" in third.fault(grace=0) and len(held) == 2
    with open_transport(registry.get("brief")) as transport:
        session = transport.connect()
        assert answers(session)
        deadline = time.monotonic() + 60
        while answers(session):  # the board ends the session after link.session_timeout
            assert time.monotonic() < deadline, "the session outlived link.session_timeout"
            time.sleep(0.5)
        assert "link.session_timeout (2 s)" in transport.fault(grace=0)


def answers(session) -> bool:
    """Whether the board answers a call on ``session``."""
    try:
        return bool(session.get_function("tvm.rpc.server.workpath")("probe"))
    except Exception:  # noqa: BLE001 - TVM raises its own errors for a session the board ended
        return False
