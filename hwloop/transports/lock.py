"""One hwloop session per device at a time: a lock held for as long as a transport is open.

A board's lock is ``board.lock`` in its work folders' parent (``~/link.workdir``), held with
``flock`` by a small process of the board's Python that lives on its own SSH channel: it is taken
before anything in a work folder is touched and released when hwloop closes the transport, when
hwloop dies, or when the SSH connection goes away (the process then reads the end of its input).
The local device's lock is a file of this machine per device name, held by the hwloop process.
Each lock file says who holds it, so the refused or waiting session can say so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import TransportError

BOARD_LOCK = "board.lock"

# Run as ``python -c HOLDER LOCKFILE OWNER``: prints {"locked": OWNER + holder pid} and holds the lock
# until its standard input ends, or prints {"busy": what the lock file says} and exits 75.
HOLDER = """\
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print(json.dumps({"busy": os.read(fd, 4096).decode(errors="replace")}), flush=True)
    sys.exit(75)
owner = dict(json.loads(sys.argv[2]), holder=os.getpid(), since=time.time())
os.ftruncate(fd, 0)
os.write(fd, json.dumps(owner).encode())
print(json.dumps({"locked": owner}), flush=True)
sys.stdin.read()
"""


def owner(device: str, token: str = "") -> dict:
    """Who takes a lock: this hwloop process, for ``device``; ``token`` tells this transport's own
    earlier hold (left by a lost connection) from another session's."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv and sys.argv[0] else "python"
    return {"device": device, "host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": token}


def describe(holder: str | dict) -> str:
    """The session a lock file names, in words."""
    if isinstance(holder, str):
        try:
            holder = json.loads(holder)
        except ValueError:
            holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another hwloop session"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
    return (
        f"hwloop pid {holder['pid']} on {holder.get('host', '?')} (`{holder.get('command', '?')}`, "
        f"device {holder.get('device', '?')!r}) since {since}"
    )


def locks_dir() -> Path:
    """Where this machine's device locks live: ``$XDG_RUNTIME_DIR/hwloop`` or ``~/.cache/hwloop/locks``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        root = Path(runtime) / "hwloop"
    else:
        root = Path.home() / ".cache" / "hwloop" / "locks"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


_held: set[str] = set()  # local devices held by this process


class LocalLock:
    """The lock of the local device ``name``; waits for another session to release it, saying so
    through ``on_wait`` (a line on stderr by default)."""

    def __init__(self, name: str, on_wait=None):
        if name in _held:
            raise TransportError(f"device {name!r} is already open in this process: close it before opening it again")
        self.name, self.path = name, locks_dir() / f"{name}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace")
            (on_wait or _say)(f"device {name!r} is in use by {describe(holder)}; waiting for it to finish")
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(self._fd)
                raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({**owner(name), "since": time.time()}).encode(), 0)
        _held.add(name)

    def release(self) -> None:
        if self._fd >= 0:
            _held.discard(self.name)
            os.close(self._fd)
            self._fd = -1


def _say(message: str) -> None:
    sys.stderr.write(f"hwloop: {message}\n")
    sys.stderr.flush()
