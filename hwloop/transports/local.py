"""The built-in local device: TVM's RPC server on this machine's loopback, pinned and thread-limited.

The server is :mod:`agent` run under ``taskset`` with ``TVM_NUM_THREADS`` from the protocol, with a
fresh key per start (sent on its standard input) and a private temporary folder for the kernels it
loads. Its whole process group dies when the transport closes or hwloop dies. Sessions reach it
through a relay that watches for stalls (:mod:`forward`): a kernel that hangs makes the client fail
after ``link.stall_timeout`` instead of blocking it, and :meth:`LocalTransport.fault` says so.
One session per device name at a time: a second one waits for the first to finish.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import fingerprint
from ..registry import Link, Protocol
from .base import Transport, new_key, start_with_retries
from .errors import TransportError
from .forward import Tunnel
from .lock import LocalLock

AGENT = Path(__file__).with_name("agent.py")


def takes_every_cpu(protocol: Protocol) -> bool:
    """Whether a local device times several threads on every CPU this process may use: hwloop and
    the system then share those CPUs with the kernel's threads."""
    allowed = os.sched_getaffinity(0)
    return protocol.threads > 1 and set(protocol.cpus or allowed) >= allowed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTransport(Transport):
    """The local device ``name``; see the module docstring."""

    def __init__(self, protocol: Protocol, name: str = "local", link: Link | None = None):
        self.protocol, self.name, self.link = protocol, name, link or Link()
        self.where = f"device {name!r}"
        self.lost: str | None = None
        self._process: subprocess.Popen | None = None
        self._relay: Tunnel | None = None
        self._scratch: str | None = None
        self._log = None
        self._key = ""
        self.server_port: int | None = None  # where the server listens (sessions go through the relay)
        self._lock = LocalLock(name)
        try:
            self._start()
        except BaseException:
            self._lock.release()
            raise

    # -- life cycle -------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            self._key = new_key()
            self._scratch = tempfile.mkdtemp(prefix=f"hwloop-{self.name}-")
            self._log = tempfile.TemporaryFile()
            command = [sys.executable, str(AGENT), "--port", str(_free_port())]
            if self.protocol.cpus:
                command = ["taskset", "-c", ",".join(map(str, self.protocol.cpus)), *command]
            env = dict(os.environ, TMPDIR=self._scratch, TVM_NUM_THREADS=str(self.protocol.threads))
            try:
                self._process = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self._log,
                    start_new_session=True,
                )
                self._process.stdin.write(f"{self._key}\n".encode())
                self._process.stdin.flush()
            except OSError as exc:
                raise TransportError(f"{self.where}: cannot start the local RPC server ({command[0]}): {exc}") from None
            self.server_port = self._ready(self.link.start_timeout)
            self._relay = Tunnel.tcp("127.0.0.1", self.server_port, self.link.stall_timeout, self.link.connect_timeout)
        except BaseException:
            self._stop()
            raise
        self.lost = None

    def _ready(self, timeout: float) -> int:
        """The port in the agent's first line, read within ``timeout`` seconds."""
        deadline, stdout = time.monotonic() + timeout, self._process.stdout
        while not select.select([stdout], [], [], max(0.0, min(1.0, deadline - time.monotonic())))[0]:
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"{self.where}: the local RPC server did not start within {timeout:g} s "
                    f"(link.start_timeout): {self._tail() or 'no output'}"
                )
        line = stdout.readline().decode(errors="replace")
        try:
            ready = json.loads(line)
        except ValueError:
            ready = None
        if not isinstance(ready, dict) or not isinstance(ready.get("port"), int):
            detail = ready.get("detail") or ready.get("missing") if isinstance(ready, dict) else line.strip()
            raise TransportError(
                f"{self.where}: the local RPC server did not start: {detail or ''} {self._tail()}".strip()
            )
        return ready["port"]

    def _tail(self) -> str:
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:]

    def _stop(self) -> None:
        """Stop the relay and the server's process group; remove the private folder."""
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def close(self) -> None:
        self._stop()
        self._lock.release()

    # -- the transport contract -------------------------------------------------------------

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the local RPC server cannot be used now, or ``None`` when it can."""
        if self.lost:
            return self.lost
        if self._process is None or self._relay is None:
            return "the local RPC server is not running"
        if self._process.poll() is not None:
            return f"the local RPC server exited ({self._process.returncode}): {self._tail() or 'no output'}"
        return self._relay.fault(grace)

    def reconnect(self) -> None:
        """Stop the server (and a kernel hung in it) and start a fresh one, with bounded retries."""
        reason = self.fault(grace=0) or "reconnect asked"
        self._stop()
        failure = start_with_retries(self._start, self.link, reason)
        if failure:
            self.lost = failure
            raise TransportError(f"{self.where}: {failure}")

    def connect(self):
        """A new RPC session with the server (after a reconnect when it was lost)."""
        from tvm import rpc

        if self.fault(grace=0):
            self.reconnect()
        return rpc.connect("127.0.0.1", self._relay.port, key=self._key)

    def fingerprint(self) -> dict:
        return fingerprint.collect(self.protocol.cpus[0] if self.protocol.cpus else 0)
