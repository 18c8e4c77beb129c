"""The emulated aarch64 board of the tests: made once by ``scripts/arm64-board`` (cached under
``.cache/arm64-board``, or ``$HWLOOP_ARM64_ROOT``), and TVM's RPC server run by its Python."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def board_python() -> Path:
    """The board's Python wrapper, making the board first if it is missing or out of date."""
    root = os.environ.get("HWLOOP_ARM64_ROOT") or REPO / ".cache" / "arm64-board"
    made = subprocess.run(
        ["bash", str(REPO / "scripts" / "arm64-board"), str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=1200,
    )
    if made.returncode != 0:
        raise RuntimeError(f"scripts/arm64-board failed ({made.returncode}): {made.stderr[-3000:]}")
    return Path(made.stdout.split()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BoardRpcServer:
    """``python -m tvm.exec.rpc_server`` run by the board's Python on 127.0.0.1, in its own process
    group (the server, its popen worker and one process per session), killed on close."""

    def __init__(self, python: Path, start_timeout: float = 300.0):
        self.port = free_port()
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [
                str(python),
                "-m",
                "tvm.exec.rpc_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--port-end",
                str(self.port + 1),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + start_timeout
        while True:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                log = self._log.read().decode(errors="replace")[-3000:]
                self.close()
                raise RuntimeError(f"the board's RPC server did not start: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)

    def connect(self):
        from tvm import rpc

        return rpc.connect("127.0.0.1", self.port, session_timeout=600)

    def close(self) -> None:
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._log.close()
