"""The local device's transport: its RPC server serves only hwloop, a hung kernel fails the session
instead of blocking it, one session per device name runs at a time, and CUDA is first touched in
the session's process."""

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from boards import gone
from tvm import rpc

from hwloop.registry import Link, Protocol
from hwloop.transports import Transport, TransportError
from hwloop.transports.base import new_key
from hwloop.transports.local import AGENT, LocalTransport
from hwloop.transports.lock import LocalLock

FAST = Protocol(warmup=1, number=2, repeat=3, min_repeat_ms=1, threads=1, cpus=[0])


def answers(session) -> bool:
    """Whether the server answers a call (one that goes to it: device queries may be answered here)."""
    return bool(session.get_function("tvm.rpc.server.workpath")("probe"))


@pytest.fixture(autouse=True)
def own_locks(tmp_path, monkeypatch):
    """This test's own lock folder, away from other hwloop sessions of this machine."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def test_server_refuses_sessions_without_its_key(tmp_path):
    with LocalTransport(FAST, "local-key") as transport:
        assert isinstance(transport, Transport)
        for port in (transport._relay.port, transport.server_port):  # through the relay, and directly
            for key in ("", "not-the-key"):
                with pytest.raises(Exception, match="cannot find server that matches key"):
                    rpc.connect("127.0.0.1", port, key=key)
        assert answers(transport.connect())


def test_a_hung_session_fails_and_the_server_is_restarted(tmp_path):
    with LocalTransport(FAST, "local-stall", Link(stall_timeout=1)) as transport:
        session = transport.connect()
        assert answers(session) and transport.fault(grace=0) is None
        hung = psutil.Process(transport._process.pid).children(recursive=True)
        for process in hung:
            process.suspend()
        with pytest.raises(Exception):  # noqa: B017 - TVM raises its own error types when the relay drops
            answers(session)
        assert "unanswered for 1 s" in transport.fault()
        transport.reconnect()
        assert answers(transport.connect()) and transport.fault(grace=0) is None
        assert all(gone(p.pid) for p in hung)


def test_a_session_that_crashes_fails_and_the_server_serves_the_next(tmp_path):
    with LocalTransport(FAST, "local-crash") as transport:
        session = transport.connect()
        assert answers(session)
        (listener,) = psutil.Process(transport._process.pid).children()
        (crashed,) = listener.children()  # the session's process, as a kernel that read out of bounds leaves it
        crashed.send_signal(signal.SIGSEGV)
        with pytest.raises(Exception):  # noqa: B017 - TVM raises its own error types when a session dies
            answers(session)
        answered = []  # from a daemon thread: before the fix, the connection waited forever
        probe = threading.Thread(target=lambda: answered.append(answers(transport.connect())), daemon=True)
        probe.start()
        probe.join(timeout=60)
        assert answered == [True]


def test_one_session_per_local_device(tmp_path):
    with LocalTransport(FAST, "local-once"):
        with pytest.raises(TransportError, match="already open in this process"):
            LocalTransport(FAST, "local-once")
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from hwloop.transports.lock import LocalLock; LocalLock('local-once'); print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline() == "held\n"
        said = []

        def release(message):
            said.append(message)
            other.stdin.close()  # the other session ends while this one waits

        LocalLock("local-once", on_wait=release).release()
        assert len(said) == 1 and f"in use by hwloop pid {other.pid}" in said[0] and "waiting" in said[0]
    finally:
        other.kill()
        other.wait()


def test_the_server_leaves_cuda_to_the_session_processes(tmp_path):
    """TVM's server forks each session from its own process, and CUDA fails in a process forked from
    one that initialised it. tvm_ffi imports torch and asks it whether CUDA is available, which
    initialises CUDA: neither the agent nor the server may have torch loaded, nor tvm_ffi's hook."""
    with LocalTransport(FAST, "local-cuda") as transport:
        session = transport.connect()
        assert answers(session)
        agent = psutil.Process(transport._process.pid)
        started = agent.children(recursive=True)
        assert len(started) >= 2  # TVM's server process, the session forked from it
        for process in [agent, *started]:
            libraries = {Path(m.path).name for m in process.memory_maps()}
            assert "libtvm_runtime.so" in libraries
            assert not {"libtorch.so", "libtorch_cpu.so", "libc10.so"} & libraries, process.cmdline()
        assert all(p.environ().get("TVM_FFI_DISABLE_TORCH_C_DLPACK") == "1" for p in started)


def test_the_agent_skips_a_port_another_server_has_bound(tmp_path):
    """Two boards on one host start their servers at once from the same first port: one has bound
    a port and not yet listens on it; the other moves on to the next port instead of sharing it
    (and failing when it listens)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TVM's servers bind
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        agent = subprocess.Popen(
            [sys.executable, str(AGENT), "--port", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            agent.stdin.write(f"{new_key()}\n")
            agent.stdin.flush()
            ready = json.loads(agent.stdout.readline())
            assert isinstance(ready.get("port"), int), ready
            assert ready["port"] != port
            taken.listen(1)  # the first server's port stays its own
        finally:
            agent.stdin.close()
            agent.wait(timeout=60)
