"""A board reached over SSH: TVM's RPC server started on the board's loopback, reached through an
SSH port forward, with the board's fingerprint read on the board.

The board needs only a Python with ``tvm`` and ``numpy``: hwloop ships what runs there
(:mod:`board_agent`, :mod:`hwloop.fingerprint`) into one work folder per device, runs the server in
its own process group (killed when hwloop closes the transport, when the SSH channel goes away,
or when the board stops answering) and removes the folder when done. Every remote argument is
quoted with :func:`shlex.quote`.

``SSHTransport(device)`` has the interface of every transport: ``connect()`` returns a TVM RPC
session (reconnecting first, with bounded retries and backoff, when the board was lost),
``fingerprint()`` describes the board, ``fault()`` says why the board is not usable right now
(``None`` when it is), ``close()`` stops everything on the board.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import threading
import time
from pathlib import Path

import paramiko

from .. import fingerprint as fingerprint_module
from ..registry import Device
from . import TransportError
from .forward import Tunnel
from .sshlink import SSH_ERRORS, Connection, HostKeyError, device_endpoint

HERE = Path(__file__).parent
SHIPPED = {
    "board_agent.py": (HERE / "board_agent.py").read_text(),
    "fingerprint.py": Path(fingerprint_module.__file__).read_text(),
    "notorch/torch.py": 'raise ImportError("the hwloop board agent runs TVM without torch")\n',
}
INSTALL = "{python} -m pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy"


class BoardError(TransportError):
    """The board is reachable but cannot run hwloop's measurements (no Python, no tvm, ...)."""


class SSHTransport:
    """TVM RPC on a board over SSH; see the module docstring."""

    def __init__(self, device: Device):
        self.device = device
        self.link = device.link
        self.endpoint = device_endpoint(device)
        self.where = f"device {device.name!r}" + (f" ({device.source})" if device.source else "")
        self._conn: Connection | None = None
        self._agent: paramiko.Channel | None = None
        self._forward: Tunnel | None = None
        self._output = bytearray()
        self._fingerprint: dict = {}
        self.board: dict = {}
        self.workdir = ""
        self.lost: str | None = None
        self._start()

    # -- life cycle -------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            self._conn = Connection(self.endpoint, self.link)
        except HostKeyError as exc:
            raise HostKeyError(f"{self.where}: {exc}; compare the fingerprint with the board's and trust it with "
                               f"`hwloop devices trust {self.device.name}`") from None
        try:
            self._prepare()
            self._launch()
        except SSH_ERRORS as exc:
            self._stop()
            raise TransportError(f"{self.where}: the SSH link failed while starting the board's RPC server: "
                                 f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._stop()
            raise
        self.lost = None

    def _prepare(self) -> None:
        """A fresh work folder on the board with the files that run there."""
        status, home = self._run('printf %s "$HOME"')
        self.workdir = posixpath.join(home if status == 0 else "", self.link.workdir, self.device.name)
        status, output = self._run(f"rm -rf -- {q(self.workdir)} && mkdir -p -- {q(self.workdir + '/notorch')} "
                                   f"{q(self.workdir + '/tmp')}")
        if status != 0:
            raise BoardError(f"{self.where}: field 'link.workdir': cannot create {self.workdir!r} on the board: "
                             f"{output.strip()[-500:]}")
        for name, text in SHIPPED.items():
            status, output = self._run(f"cat > {q(posixpath.join(self.workdir, name))}", text.encode())
            if status != 0:
                raise BoardError(f"{self.where}: cannot write {name} into {self.workdir!r} on the board: "
                                 f"{output.strip()[-500:]}")

    def _launch(self) -> None:
        p = self.device.protocol
        pin = f"taskset -c {q(','.join(map(str, p.cpus)))} " if p.cpus else ""
        command = (f"cd {q(self.workdir)} && exec env TMPDIR={q(self.workdir + '/tmp')} TVM_NUM_THREADS={p.threads} "
                   f"{pin}{q(self.device.python)} board_agent.py --executable {q(self.device.python)}")
        channel = self._conn.client.get_transport().open_session(timeout=self.link.connect_timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        self._agent, self._output = channel, bytearray()
        line = self._read_line(channel, self.link.start_timeout)
        threading.Thread(target=self._drain, args=(channel,), daemon=True).start()
        self.board = self._parse_ready(line)
        self._forward = Tunnel(self.device, self.board["port"])

    def _read_line(self, channel: paramiko.Channel, timeout: float) -> str:
        """The agent's first JSON line (anything it printed before is kept for error messages)."""
        deadline = time.monotonic() + timeout
        channel.settimeout(1.0)
        while time.monotonic() < deadline:
            lines = self._output.split(b"\n")
            for line in lines[:-1]:
                if line.startswith(b"{"):
                    return line.decode(errors="replace")
            try:
                data = channel.recv(4096)
            except TimeoutError:
                continue
            except SSH_ERRORS as exc:
                raise TransportError(f"{self.where}: the SSH link dropped while the board's RPC server started: "
                                     f"{type(exc).__name__}: {exc}") from None
            if not data:
                raise self._start_failure(_exit_status(channel))
            self._output += data
        raise TransportError(f"{self.where}: the board's RPC server did not start within "
                             f"{timeout:g} s (link.start_timeout); it printed: {self.tail() or 'nothing'}")

    def _start_failure(self, status: int | None) -> TransportError:
        python = self.device.python
        if status == 127:
            return BoardError(f"{self.where}: field 'python': {python!r} cannot be run on {self.device.host} "
                              f"(exit 127: {self.tail()}); set `python` to the board's interpreter "
                              "that has tvm and numpy")
        return BoardError(f"{self.where}: the board's RPC server exited with status {status} before it was "
                          f"ready; it printed: {self.tail() or 'nothing'}")

    def _parse_ready(self, line: str) -> dict:
        try:
            ready = json.loads(line)
        except ValueError:
            ready = None
        if not isinstance(ready, dict):
            raise TransportError(f"{self.where}: garbled answer from the board's agent: {line[:200]!r}")
        if ready.get("error") == "missing":
            raise BoardError(f"{self.where}: the board's python {self.device.python!r} (Python "
                             f"{ready.get('python_version')}) cannot import {', '.join(ready['missing'])}; "
                             f"install on the board: {INSTALL.format(python=shlex.quote(self.device.python))}")
        if ready.get("error"):
            raise BoardError(f"{self.where}: importing tvm on the board failed: {ready.get('detail')}")
        if not isinstance(ready.get("port"), int) or not isinstance(ready.get("pgid"), int):
            raise TransportError(f"{self.where}: the board's agent answered without a port: {line[:200]!r}")
        return ready

    def _drain(self, channel: paramiko.Channel) -> None:
        """Read the agent's output for as long as it runs (a full SSH window would block it)."""
        channel.settimeout(None)
        try:
            while data := channel.recv(4096):
                self._output = (self._output + data)[-4000:]
        except SSH_ERRORS:
            pass

    def tail(self) -> str:
        return self._output.decode(errors="replace").strip()[-1000:]

    def _run(self, command: str, stdin: bytes = b"", conn: Connection | None = None) -> tuple[int, str]:
        """Run ``command`` (already quoted) on the board with ``stdin``; its exit status and output."""
        conn = conn or self._conn
        if conn is None:
            raise TransportError(f"{self.where}: not connected")
        channel = conn.client.get_transport().open_session(timeout=self.link.connect_timeout)
        channel.settimeout(self.link.connect_timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        stdout = channel.makefile("rb")
        output = stdout.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), output

    def _stop(self) -> None:
        """Kill the board's process group, remove the work folder, close the link; best effort."""
        if self._forward:
            self._forward.close()
        conn, agent, pgid = self._conn, self._agent, self.board.get("pgid")
        self._conn = self._agent = self._forward = None
        self.board = {}
        if conn is None:
            return
        try:
            if conn.active:
                kill = f"kill -KILL -- -{int(pgid)} 2>/dev/null; " if pgid else ""
                self._run(f"{kill}rm -rf -- {q(self.workdir)}" if self.workdir else kill or "true", conn=conn)
        except (*SSH_ERRORS, TransportError):
            pass
        finally:
            if agent is not None:
                agent.close()
            conn.close()

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> "SSHTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the transport interface ------------------------------------------------------------

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the board's RPC server cannot be used now, or ``None`` when it can (a fault being
        reported is waited for up to ``grace`` seconds)."""
        if self.lost:
            return self.lost
        if self._conn is None or not self._conn.active:
            return f"the SSH connection to {self.endpoint.hostname}:{self.endpoint.port} was lost"
        if self._agent is None or self._agent.exit_status_ready() or self._agent.closed:
            return f"the board's RPC server exited: {self.tail() or 'no output'}"
        if self._forward is None:
            return "no port forward to the board"
        return self._forward.fault(grace)

    def reconnect(self) -> None:
        """Stop what is left and start again, retrying with backoff; raises when the board stays away."""
        reason = self.fault(grace=0) or "reconnect asked"
        self._stop()
        delay, last = self.link.backoff, None
        for attempt in range(self.link.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                self._start()
                return
            except (BoardError, HostKeyError) as exc:
                self.lost = str(exc)
                raise
            except TransportError as exc:
                last = exc
        self.lost = (f"{reason}; {self.link.retries + 1} reconnects failed, the last: {last}")
        raise TransportError(f"{self.where}: {self.lost}")

    def connect(self):
        """A new TVM RPC session on the board (after a reconnect if the board was lost)."""
        from tvm import rpc

        if self.fault(grace=0):
            self.reconnect()
        return rpc.connect("127.0.0.1", self._forward.port)

    def fingerprint(self) -> dict:
        """The board's fingerprint, read on the board; the last one read when it cannot be read now."""
        cpu = self.device.protocol.cpus[0] if self.device.protocol.cpus else 0
        try:
            status, output = self._run(f"cd {q(self.workdir)} && exec {q(self.device.python)} fingerprint.py {cpu}")
            found = json.loads(output.strip().splitlines()[-1]) if status == 0 and output.strip() else None
            if isinstance(found, dict) and isinstance(found.get("id"), str):
                self._fingerprint = found
        except (*SSH_ERRORS, TransportError, ValueError, AttributeError):
            pass
        return dict(self._fingerprint)


def q(text: str) -> str:
    return shlex.quote(text)


def _exit_status(channel: paramiko.Channel, wait: float = 2.0) -> int | None:
    """The exit status of a command whose output has ended (it may arrive just after the end), or None."""
    deadline = time.monotonic() + wait
    while not channel.exit_status_ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    return channel.recv_exit_status() if channel.exit_status_ready() else None
