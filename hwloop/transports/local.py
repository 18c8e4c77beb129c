"""The built-in local device: a TVM RPC server on this machine, pinned and thread-limited."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .. import fingerprint
from ..lifetime import die_with_parent
from ..registry import Protocol


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTransport:
    """Runs TVM's RPC server under ``taskset`` with ``TVM_NUM_THREADS`` from the protocol.

    The server dies with this process and is closed with its session processes, so a killed
    collection leaves nothing running.
    """

    def __init__(self, protocol: Protocol, start_timeout: float = 120.0):
        self.protocol = protocol
        self.start_timeout = start_timeout
        self._start()

    def _start(self) -> None:
        protocol = self.protocol
        self.port = _free_port()
        self._log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "hwloop.transports.serve", "--port", str(self.port),
                   "--port-end", str(self.port + 1)]
        if protocol.cpus:
            command = ["taskset", "-c", ",".join(map(str, protocol.cpus)), *command]
        env = dict(os.environ, TVM_NUM_THREADS=str(protocol.threads))
        self._process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM), start_new_session=True)
        self._wait_ready(self.start_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                output = self._log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"local RPC server exited with code {self._process.returncode}: {output}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"local RPC server did not listen on port {self.port} within {timeout:.0f} s")

    def connect(self):
        """A new RPC session with the server."""
        from tvm import rpc

        return rpc.connect("127.0.0.1", self.port)

    def fault(self, grace: float = 0.0) -> str | None:
        """Why the server cannot serve now (it exited), or None."""
        if self._process.poll() is not None:
            return f"the local RPC server exited with code {self._process.returncode}"
        return None

    def reconnect(self) -> None:
        """Start the server again if it exited."""
        if self.fault() is not None:
            self.close()
            self._start()

    def fingerprint(self) -> dict:
        return fingerprint.collect(self.protocol.cpus[0] if self.protocol.cpus else 0)

    def close(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._log.close()

    def __enter__(self) -> "LocalTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
