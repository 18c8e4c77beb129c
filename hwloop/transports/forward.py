"""A port on this machine's loopback relayed to a device's RPC server, with a watch for stalls.

The relay (:class:`Forward`) leads each connection to the server over SSH (a ``direct-tcpip``
channel to a port on the board's loopback) or over TCP (the local device's server, or a tracker's
board). It watches the device: a request that gets no answer for ``stall_timeout`` seconds (a hung
device, a stalled link) closes the relayed connections, so that the RPC client blocked on them fails
at once instead of waiting forever, and says why.

Only hwloop can use the relayed port: the server at the far end refuses a client without the key
it was started with, and TVM's handshake carries the key end to end.

The relay runs in its own process (:class:`Tunnel`, ``python -m hwloop.transports.forward``) that
dies with hwloop: TVM's RPC client holds the GIL while it waits for the device, so bytes could not
be moved, nor a stall noticed, by a thread of the process that waits for them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ..lifetime import die_with_parent
from .errors import TransportError

RELAY_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)


class Forward:
    """``127.0.0.1:port`` here → what ``open_upstream(peer)`` connects to (a socket, or an SSH channel),
    one upstream connection per client connection."""

    def __init__(
        self,
        open_upstream: Callable[[tuple], object],
        stall_timeout: float,
        on_stall: Callable[[str], None] | None = None,
        errors: tuple[type[BaseException], ...] = RELAY_ERRORS,
    ):
        self.open_upstream, self.stall_timeout, self.on_stall = open_upstream, stall_timeout, on_stall
        self.errors = errors
        self.stalled: str | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, object]] = []
        self._waiting: dict[int, float] = {}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.port}").start()
        threading.Thread(target=self._watch, daemon=True, name=f"stall-watch-{self.port}").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                local, peer = self._listener.accept()
            except OSError:
                return
            try:
                upstream = self.open_upstream(peer)
            except self.errors:
                local.close()
                continue
            with self._lock:
                self._pairs.append((local, upstream))
            threading.Thread(target=self._pump, args=(local, upstream), daemon=True).start()

    def _pump(self, local: socket.socket, upstream) -> None:
        key = id(upstream)
        try:
            while True:
                ready, _, _ = select.select([local, upstream], [], [], 1.0)
                if local in ready:
                    data = local.recv(65536)
                    if not data:
                        break
                    self._waiting.setdefault(key, time.monotonic())
                    upstream.sendall(data)
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    self._waiting.pop(key, None)
                    local.sendall(data)
                if self._closed or _closed(upstream):
                    break
        except (*self.errors, ValueError):  # ValueError: select on a socket closed by drop_all
            pass
        finally:
            self._waiting.pop(key, None)
            self._drop(local, upstream)

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, self.stall_timeout / 4))
            now = time.monotonic()
            if any(now - since > self.stall_timeout for since in list(self._waiting.values())):
                self.stalled = (
                    f"the device left a request unanswered for {self.stall_timeout:g} s "
                    "(link.stall_timeout: hung device or stalled link)"
                )
                if self.on_stall:
                    self.on_stall(self.stalled)
                self.drop_all()

    def _drop(self, local: socket.socket, upstream) -> None:
        with self._lock:
            if (local, upstream) in self._pairs:
                self._pairs.remove((local, upstream))
        for end in (local, upstream):
            try:
                end.close()
            except self.errors:
                pass

    def drop_all(self) -> None:
        """Close every relayed connection (the RPC client on them fails at once)."""
        with self._lock:
            pairs = list(self._pairs)
        for local, upstream in pairs:
            try:
                local.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._drop(local, upstream)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_all()


def _closed(upstream) -> bool:
    closed = getattr(upstream, "closed", None)  # a paramiko channel
    return closed if isinstance(closed, bool) else upstream.fileno() < 0


class Tunnel:
    """A :class:`Forward` run in a child process that dies with hwloop; :meth:`ssh` or :meth:`tcp`."""

    def __init__(self, request: dict):
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
        )
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        first = self._process.stdout.readline()
        try:
            answer = json.loads(first)
        except ValueError:
            answer = {"error": first.strip() or f"the relay process exited ({self._process.wait()})"}
        if "port" not in answer:
            self.close()
            raise TransportError(answer.get("error", "the relay to the device did not start"))
        self.port: int = answer["port"]
        self.event: str | None = None

    @classmethod
    def ssh(cls, device, remote_port: int) -> Tunnel:
        """To ``remote_port`` on the loopback of ``device``'s board, over a new SSH connection."""
        return cls({"device": device.model_dump(mode="json"), "port": remote_port})

    @classmethod
    def tcp(cls, host: str, port: int, stall_timeout: float, connect_timeout: float) -> Tunnel:
        """To ``host:port`` over TCP."""
        return cls({"host": host, "port": port, "stall_timeout": stall_timeout, "connect_timeout": connect_timeout})

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the relay stopped, or ``None``; waits up to ``grace`` s for a report just being sent
        (the relay reports a stall before it drops the connections that make the client fail)."""
        if self.event is None and select.select([self._process.stdout], [], [], grace)[0]:
            line = self._process.stdout.readline()
            try:
                self.event = json.loads(line)["fault"]
            except (ValueError, KeyError, TypeError):
                self.event = "the relay to the device ended"
        return self.event

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def _say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _serve_ssh(request: dict) -> None:
    import paramiko

    from ..registry import Device
    from .sshlink import SSH_ERRORS, Connection, device_endpoint

    device = Device.model_validate(request["device"])
    try:
        conn = Connection(device_endpoint(device), device.link)
    except TransportError as exc:
        _say(error=str(exc))
        return
    transport: paramiko.Transport = conn.client.get_transport()
    forward = Forward(
        lambda peer: transport.open_channel(
            "direct-tcpip", ("127.0.0.1", request["port"]), peer, timeout=device.link.connect_timeout
        ),
        device.link.stall_timeout,
        on_stall=lambda message: _say(fault=message),
        errors=SSH_ERRORS,
    )
    _say(port=forward.port)
    while conn.active and not forward.stalled:
        time.sleep(0.2)
    if not forward.stalled:
        _say(fault=f"the SSH connection to {device.host}:{device.port} was lost")
    forward.close()
    conn.close()


def _serve_tcp(request: dict) -> None:
    def open_upstream(peer):
        upstream = socket.create_connection((request["host"], request["port"]), timeout=request["connect_timeout"])
        upstream.settimeout(None)
        return upstream

    forward = Forward(open_upstream, request["stall_timeout"], on_stall=lambda message: _say(fault=message))
    _say(port=forward.port)
    while not forward.stalled:
        time.sleep(0.2)
    forward.close()


if __name__ == "__main__":
    _request = json.loads(sys.stdin.readline())
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    (_serve_ssh if "device" in _request else _serve_tcp)(_request)
