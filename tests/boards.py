"""Test boards: real OpenSSH servers on loopback addresses, and a TCP proxy that injects link faults.

Each :class:`Board` is ``/usr/sbin/sshd -D -f CONFIG`` with its own host key, authorized_keys, home
folder (``$HOME`` of its sessions) and address in 127.0.0.0/8. Everything started here is killed by pid.
"""

from __future__ import annotations

import getpass
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"
PYTHON = sys.executable
# a short protocol that counts no trial as disturbed, times no sentinel and takes nothing again (a busy
# test machine would have them taken again, and a config measured twice)
SHORT_PROTOCOL = {
    "warmup": 1,
    "number": 2,
    "repeat": 3,
    "min_repeat_ms": 1,
    "trials": 2,
    "max_trials": 3,
    "max_wait": 1.0,
    "max_steal": 1.0,
    "sentinel": None,
    "retake_scattered": False,
}

CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
UseDNS no
ClientAliveInterval 5
LogLevel ERROR
Subsystem sftp internal-sftp
SetEnv HOME={root}/home
"""


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)], check=True)
    return path


def free_address() -> tuple[str, int]:
    """An unused ``127.0.0.x`` address and port (x in 20..250, away from 127.0.0.1)."""
    address = f"127.0.0.{random.randint(20, 250)}"
    with socket.socket() as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


def wait_listening(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Board:
    """One sshd on its own loopback address; ``user_key`` logs in as the current user."""

    def __init__(self, root: Path, user_pub: Path):
        self.root = root
        root.mkdir(parents=True)
        self.home = root / "home"
        self.home.mkdir()
        self.address, self.port = free_address()
        self.host_key = keygen(root / "host_key")
        (root / "authorized_keys").write_text(user_pub.read_text())
        self.config = root / "sshd_config"
        self.config.write_text(CONFIG.format(address=self.address, port=self.port, host_key=self.host_key, root=root))
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stderr=open(self.root / "sshd.log", "ab"),
        )
        wait_listening(self.address, self.port)

    def sessions(self) -> list[psutil.Process]:
        """Every process under the listener: per-connection sshd and what they run."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_sessions(self, sig: int) -> list[psutil.Process]:
        found = self.sessions()
        for p in found:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> None:
        """SIGKILL the listener and every process under it (the board drops)."""
        if self.process is None:
            return
        found = self.sessions()
        for p in [psutil.Process(self.process.pid), *found] if self.process.poll() is None else found:
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait()
        psutil.wait_procs(found, timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def known_hosts_line(self) -> str:
        public = (self.root / "host_key.pub").read_text().split()
        return f"[{self.address}]:{self.port} {public[0]} {public[1]}\n"

    def device(self, name: str, user_key: Path, known_hosts: Path, **fields) -> dict:
        """The registry fields of a device on this board (a fast protocol that takes nothing again, short timeouts)."""
        return {
            "host": self.address,
            "port": self.port,
            "user": getpass.getuser(),
            "key": str(user_key),
            "known_hosts": str(known_hosts),
            "python": PYTHON,
            "target": {"kind": "llvm", "mcpu": "host"},
            "protocol": {**SHORT_PROTOCOL, "threads": 1, "batch": 2},
            "link": {
                "connect_timeout": 3,
                "keepalive": 1,
                "stall_timeout": 4,
                "retries": 3,
                "backoff": 0.5,
                "workdir": "work",
            },
            **fields,
        }


class Proxy:
    """``listen`` (``127.0.0.1`` and a free port unless given) → a board's ``address:port``, with faults:
    :meth:`stall` (stop moving bytes), :meth:`resume`, :meth:`cut` (close every connection).

    The relay runs in a process of its own: TVM's RPC client holds the GIL while it waits for an
    answer, so a relay thread beside an RPC client would stall every request it carries."""

    def __init__(self, address: str, port: int, listen: tuple[str, int] = ("127.0.0.1", 0)):
        self._process = subprocess.Popen(
            [PYTHON, __file__, "proxy", address, str(port), *map(str, listen)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.address, port = self._process.stdout.readline().split()
        self.port = int(port)

    def _tell(self, command: str) -> None:
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        assert self._process.stdout.readline().strip() == "ok", f"the proxy did not {command}"

    def stall(self) -> None:
        self._tell("stall")

    def resume(self) -> None:
        self._tell("resume")

    def cut(self) -> None:
        self._tell("cut")

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process.stdin.close()
        self._process.stdout.close()


class _Relay:
    """What :class:`Proxy` runs in its process."""

    def __init__(self, address: str, port: int, listen: tuple[str, int]):
        self.target = (address, port)
        self._listener = socket.create_server(listen)
        self.address, self.port = self._listener.getsockname()
        self._moving = threading.Event()
        self._moving.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                continue
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._moving.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(self) -> None:
        """Answer the commands on stdin (``stall``, ``resume``, ``cut``) with ``ok``, until it closes."""
        print(self.address, self.port, flush=True)
        for command in sys.stdin:
            if command.strip() == "stall":
                self._moving.clear()
            elif command.strip() == "resume":
                self._moving.set()
            elif command.strip() == "cut":
                for s in self._sockets:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    except OSError:
                        pass
                self._sockets.clear()
            print("ok", flush=True)


def start_tracker(port: int, log) -> subprocess.Popen:
    """TVM's RPC tracker on 127.0.0.1:``port``, writing to the open file ``log``, in a session of its
    own (so that killing its group ends it)."""
    return subprocess.Popen(
        [PYTHON, "-m", "tvm.exec.rpc_tracker", "--silent", "--host", "127.0.0.1"]
        + ["--port", str(port), "--port-end", str(port + 1)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def write_registry(directory: Path, devices: dict[str, dict], groups: dict | None = None) -> Path:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "boards.yaml").write_text(yaml.safe_dump({"groups": groups or {}, "devices": devices}))
    return directory


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    target_address, target_port, listen_address, listen_port = sys.argv[2:]
    _Relay(target_address, int(target_port), (listen_address, int(listen_port))).serve()
