"""A board reached over SSH: TVM's RPC server started on the board's loopback, reached through an
SSH port forward, with the board's fingerprint read on the board.

The board needs only a Python with ``tvm`` and ``numpy``. Starting a session:

1. take the board's lock (:mod:`lock`): a small process of the board's Python holds ``flock`` on
   ``~/link.workdir/board.lock`` for as long as the transport is open; another hwloop session is
   refused, naming the one that holds the board;
2. make the device's work folder ``~/link.workdir/NAME`` afresh, with hwloop's marker file in it:
   a folder is deleted only when it carries the marker, so a folder hwloop did not make is never
   deleted;
3. ship :mod:`agent` (with :mod:`usage` and :mod:`trial`) and :mod:`hwloop.fingerprint` there and
   start the agent (TVM's RPC server, in its own process group) with a fresh key on its standard
   input, which the server then requires;
4. forward a port of this machine's loopback to the server (:mod:`forward`), watching for stalls.

Closing kills the board's process group, removes the work folder, then releases the lock; the
agent and the lock also go when the SSH connection does. Every remote argument is quoted with
:func:`shlex.quote`.
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
from .base import Transport, new_key, start_with_retries
from .errors import DeviceBusy, TransportError
from .forward import Tunnel
from .lock import BOARD_LOCK, HOLDER, describe, owner
from .sshlink import SSH_ERRORS, Connection, HostKeyError, device_endpoint

HERE = Path(__file__).parent
SHIPPED = {
    "agent.py": (HERE / "agent.py").read_text(),
    "usage.py": (HERE / "usage.py").read_text(),
    "trial.py": (HERE / "trial.py").read_text(),
    "fingerprint.py": Path(fingerprint_module.__file__).read_text(),
}
MARKER = ".hwloop-workdir"  # in every work folder hwloop made, and only there
NOT_OURS = 17  # exit status of the work folder's preparation when the folder exists without the marker
INSTALL = "{python} -m pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy cloudpickle psutil"


class BoardError(TransportError):
    """The board is reachable but cannot run hwloop's measurements (no Python, no tvm, ...)."""


class SSHTransport(Transport):
    """TVM RPC on a board over SSH; see the module docstring."""

    def __init__(self, device: Device):
        self.device = device
        self.link = device.link
        self.endpoint = device_endpoint(device)
        self.where = f"device {device.name!r}" + (f" ({device.source})" if device.source else "")
        self._conn: Connection | None = None
        self._holder: paramiko.Channel | None = None
        self._agent: paramiko.Channel | None = None
        self._forward: Tunnel | None = None
        self._output = bytearray()
        self._fingerprint: dict = {}
        self._token = new_key()  # in the lock file: tells this transport's own earlier hold from another session's
        self._key = ""
        self._left_pgid: int | None = None  # an agent left running when the connection was lost
        self.board: dict = {}
        self.root = self.workdir = ""
        self.lost: str | None = None
        self._start()

    # -- life cycle -------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            self._conn = Connection(self.endpoint, self.link)
        except HostKeyError as exc:
            raise HostKeyError(
                f"{self.where}: {exc}; compare the fingerprint with the board's and trust it with "
                f"`hwloop devices trust {self.device.name}`"
            ) from None
        try:
            self._lock()
            self._prepare()
            self._launch()
        except SSH_ERRORS as exc:
            self._stop()
            raise TransportError(
                f"{self.where}: the SSH link failed while starting the board's RPC server: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            self._stop()
            raise
        self.lost = None

    def _lock(self) -> None:
        """Take the board's lock (see :mod:`lock`); a hold of this transport's own that a lost
        connection left behind is ended first."""
        status, home = self._run('printf %s "$HOME"')
        self.root = posixpath.join(home if status == 0 else "", self.link.workdir)
        self.workdir = posixpath.join(self.root, self.device.name)
        lockfile = posixpath.join(self.root, BOARD_LOCK)
        command = (
            f"mkdir -p -- {q(self.root)} && exec {q(self.device.python)} -c {q(HOLDER)} {q(lockfile)} "
            f"{q(json.dumps(owner(self.device.name, self._token)))}"
        )
        for attempt in range(2):
            channel, output = self._exec(command)
            answer = self._answer(channel, output, "taking the board's lock")
            if "locked" in answer:
                self._holder = channel
                return
            channel.close()
            try:
                holder = json.loads(answer.get("busy", ""))
            except (TypeError, ValueError):
                holder = {}
            if attempt == 0 and isinstance(holder, dict) and holder.get("token") == self._token:
                stale = " ".join(str(int(p)) for p in (holder.get("holder"), self._left_pgid and -self._left_pgid) if p)
                self._run(f"kill -KILL -- {stale} 2>/dev/null; true")
                self._left_pgid = None
                time.sleep(0.2)
                continue
            raise DeviceBusy(
                f"{self.where}: the board is in use by {describe(holder)} (lock {lockfile} on the "
                "board); one hwloop session per board at a time: wait for it to finish"
            )

    def _prepare(self) -> None:
        """A fresh work folder on the board, with hwloop's marker and the files that run there."""
        workdir, marker = q(self.workdir), q(posixpath.join(self.workdir, MARKER))
        status, output = self._run(
            f"if [ -e {workdir} ] || [ -L {workdir} ]; then [ -f {marker} ] || exit {NOT_OURS}; "
            f"rm -rf -- {workdir}; fi; "
            f"mkdir -m 700 -- {workdir} && : > {marker} && mkdir -- {q(self.workdir + '/tmp')}"
        )
        if status == NOT_OURS:
            raise BoardError(
                f"{self.where}: field 'link.workdir': {self.workdir!r} exists on the board and was not "
                f"made by hwloop (no {MARKER} in it); hwloop deletes only folders it made: move it "
                "away or choose another link.workdir"
            )
        if status != 0:
            raise BoardError(
                f"{self.where}: field 'link.workdir': cannot create {self.workdir!r} on the board: "
                f"{output.strip()[-500:]}"
            )
        for name, text in SHIPPED.items():
            status, output = self._run(f"cat > {q(posixpath.join(self.workdir, name))}", text.encode())
            if status != 0:
                raise BoardError(
                    f"{self.where}: cannot write {name} into {self.workdir!r} on the board: {output.strip()[-500:]}"
                )

    def _launch(self) -> None:
        p = self.device.protocol
        pin = f"taskset -c {q(','.join(map(str, p.cpus)))} " if p.cpus else ""
        self._key = new_key()
        command = (
            f"cd {q(self.workdir)} && exec env TMPDIR={q(self.workdir + '/tmp')} TVM_NUM_THREADS={p.threads} "
            f"{pin}{q(self.device.python)} agent.py --executable {q(self.device.python)}"
        )
        self._agent, self._output = self._exec(command, f"{self._key}\n".encode())
        self.board = self._parse_ready(self._answer(self._agent, self._output, "starting the board's RPC server"))
        threading.Thread(target=self._drain, args=(self._agent,), daemon=True).start()
        self._forward = Tunnel.ssh(self.device, self.board["port"])

    def _exec(self, command: str, stdin: bytes = b"") -> tuple[paramiko.Channel, bytearray]:
        """``command`` started on the board (its output combined), kept running; ``stdin`` sent to it."""
        channel = self._conn.client.get_transport().open_session(timeout=self.link.connect_timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        return channel, bytearray()

    def _answer(self, channel: paramiko.Channel, output: bytearray, doing: str) -> dict:
        """The first JSON line a command started by :meth:`_exec` prints, read within ``link.start_timeout``
        (anything printed before it is kept in ``output`` for error messages)."""
        deadline = time.monotonic() + self.link.start_timeout
        channel.settimeout(1.0)
        while time.monotonic() < deadline:
            for line in output.split(b"\n")[:-1]:
                if line.startswith(b"{"):
                    try:
                        answer = json.loads(line)
                    except ValueError:
                        answer = None
                    if not isinstance(answer, dict):
                        raise TransportError(
                            f"{self.where}: garbled answer from the board's python while {doing}: "
                            f"{line[:200].decode(errors='replace')!r}"
                        )
                    return answer
            try:
                data = channel.recv(4096)
            except TimeoutError:
                continue
            except SSH_ERRORS as exc:
                raise TransportError(
                    f"{self.where}: the SSH link dropped while {doing}: {type(exc).__name__}: {exc}"
                ) from None
            if not data:
                raise self._start_failure(_exit_status(channel), _tail(output), doing)
            output += data
        raise TransportError(
            f"{self.where}: no answer from the board's python within {self.link.start_timeout:g} s "
            f"(link.start_timeout) while {doing}; it printed: {_tail(output) or 'nothing'}"
        )

    def _start_failure(self, status: int | None, printed: str, doing: str) -> TransportError:
        python = self.device.python
        if status == 127:
            return BoardError(
                f"{self.where}: field 'python': {python!r} cannot be run on {self.device.host} "
                f"(exit 127: {printed}); set `python` to the board's interpreter that has tvm and numpy"
            )
        return BoardError(
            f"{self.where}: the board's python exited with status {status} while {doing}; it printed: "
            f"{printed or 'nothing'}"
        )

    def _parse_ready(self, ready: dict) -> dict:
        if ready.get("error") == "missing":
            raise BoardError(
                f"{self.where}: the board's python {self.device.python!r} (Python "
                f"{ready.get('python_version')}) cannot import {', '.join(ready['missing'])}; "
                f"install on the board: {INSTALL.format(python=shlex.quote(self.device.python))}"
            )
        if ready.get("error") == "import":
            raise BoardError(f"{self.where}: importing tvm on the board failed: {ready.get('detail')}")
        if ready.get("error"):
            raise BoardError(f"{self.where}: the board's RPC server did not start: {ready.get('detail')}")
        if not isinstance(ready.get("port"), int) or not isinstance(ready.get("pgid"), int):
            raise TransportError(f"{self.where}: garbled answer from the board's agent: {json.dumps(ready)[:200]}")
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
        return _tail(self._output)

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
        """Kill the board's process group, remove the work folder (when hwloop made it), release the
        lock, close the link; best effort."""
        if self._forward:
            self._forward.close()
        conn, agent, holder, pgid = self._conn, self._agent, self._holder, self.board.get("pgid")
        self._conn = self._agent = self._holder = self._forward = None
        self.board = {}
        if conn is None:
            return
        try:
            if conn.active and holder is not None:
                kill = f"kill -KILL -- -{int(pgid)} 2>/dev/null; " if pgid else ""
                marker = q(posixpath.join(self.workdir, MARKER))
                self._run(f"{kill}if [ -f {marker} ]; then rm -rf -- {q(self.workdir)}; fi", conn=conn)
                pgid = None
        except (*SSH_ERRORS, TransportError):
            pass
        finally:
            self._left_pgid = pgid or self._left_pgid
            for channel in (agent, holder):
                if channel is not None:
                    channel.close()
            conn.close()

    def close(self) -> None:
        self._stop()

    # -- the transport contract -------------------------------------------------------------

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
        try:
            failure = start_with_retries(self._start, self.link, reason, fatal=(BoardError, HostKeyError, DeviceBusy))
        except TransportError as exc:
            self.lost = str(exc)
            raise
        if failure:
            self.lost = failure
            raise TransportError(f"{self.where}: {failure}")

    def connect(self):
        """A new TVM RPC session on the board (after a reconnect if the board was lost)."""
        from tvm import rpc

        if self.fault(grace=0):
            self.reconnect()
        return rpc.connect("127.0.0.1", self._forward.port, key=self._key)

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


def _tail(output: bytearray) -> str:
    return output.decode(errors="replace").strip()[-1000:]


def _exit_status(channel: paramiko.Channel, wait: float = 2.0) -> int | None:
    """The exit status of a command whose output has ended (it may arrive just after the end), or None."""
    deadline = time.monotonic() + wait
    while not channel.exit_status_ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    return channel.recv_exit_status() if channel.exit_status_ready() else None
