"""A local TCP port forwarded to a port on the board's loopback through SSH (``direct-tcpip``).

It also watches the board: a request that gets no answer for ``stall_timeout`` seconds (a hung
board, a stalled link) closes the forwarded connections, so that the RPC client blocked on them
fails at once instead of waiting forever, and :attr:`Forward.stalled` says why.

The forward runs in its own process (:class:`Tunnel`, ``python -m hwloop.transports.forward``)
with its own SSH connection: TVM's RPC client holds the GIL while it waits for the board, so
bytes could not be moved by a thread of the process that waits for them.
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

import paramiko

from ..lifetime import die_with_parent


class Forward:
    """``127.0.0.1:port`` here → ``127.0.0.1:remote_port`` on the board, one SSH channel per connection."""

    def __init__(self, transport: paramiko.Transport, remote_port: int, stall_timeout: float,
                 open_timeout: float = 10.0, on_stall=None):
        self.transport, self.remote_port, self.on_stall = transport, remote_port, on_stall
        self.stall_timeout, self.open_timeout = stall_timeout, open_timeout
        self.stalled: str | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, paramiko.Channel]] = []
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
                channel = self.transport.open_channel("direct-tcpip", ("127.0.0.1", self.remote_port), peer,
                                                      timeout=self.open_timeout)
            except (paramiko.SSHException, OSError, EOFError):
                local.close()
                continue
            with self._lock:
                self._pairs.append((local, channel))
            threading.Thread(target=self._pump, args=(local, channel), daemon=True).start()

    def _pump(self, local: socket.socket, channel: paramiko.Channel) -> None:
        key = id(channel)
        try:
            while True:
                ready, _, _ = select.select([local, channel], [], [], 1.0)
                if local in ready:
                    data = local.recv(65536)
                    if not data:
                        break
                    self._waiting.setdefault(key, time.monotonic())
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    self._waiting.pop(key, None)
                    local.sendall(data)
                if self._closed or channel.closed:
                    break
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._waiting.pop(key, None)
            self._drop(local, channel)

    def _watch(self) -> None:
        while not self._closed:
            time.sleep(min(1.0, self.stall_timeout / 4))
            now = time.monotonic()
            if any(now - since > self.stall_timeout for since in list(self._waiting.values())):
                self.stalled = (f"the board left a request unanswered for {self.stall_timeout:g} s "
                                "(hung board or stalled link)")
                if self.on_stall:
                    self.on_stall(self.stalled)
                self.drop_all()

    def _drop(self, local: socket.socket, channel: paramiko.Channel) -> None:
        with self._lock:
            if (local, channel) in self._pairs:
                self._pairs.remove((local, channel))
        for end in (local, channel):
            try:
                end.close()
            except (OSError, EOFError):
                pass

    def drop_all(self) -> None:
        """Close every forwarded connection (the RPC client on them fails at once)."""
        with self._lock:
            pairs = list(self._pairs)
        for local, channel in pairs:
            try:
                local.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._drop(local, channel)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_all()


class Tunnel:
    """A forward to ``remote_port`` on ``device``'s board, run in a child process that dies with hwloop."""

    def __init__(self, device, remote_port: int):
        request = json.dumps({"device": device.model_dump(mode="json"), "port": remote_port})
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        self._process.stdin.write(request + "\n")
        self._process.stdin.flush()
        first = self._process.stdout.readline()
        try:
            answer = json.loads(first)
        except ValueError:
            answer = {"error": first.strip() or f"the forward process exited ({self._process.wait()})"}
        if "port" not in answer:
            self.close()
            from . import TransportError

            raise TransportError(answer.get("error", "the port forward did not start"))
        self.port: int = answer["port"]
        self.event: str | None = None

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the forward stopped, or ``None``; waits up to ``grace`` s for a report just being sent
        (the forward reports a stall before it drops the connections that make the client fail)."""
        if self.event is None and select.select([self._process.stdout], [], [], grace)[0]:
            line = self._process.stdout.readline()
            try:
                self.event = json.loads(line)["fault"]
            except (ValueError, KeyError, TypeError):
                self.event = "the SSH port forward to the board ended"
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


def _serve() -> None:
    from ..registry import Device
    from . import TransportError
    from .sshlink import Connection, device_endpoint

    request = json.loads(sys.stdin.readline())
    device = Device.model_validate(request["device"])

    def say(**fields) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    try:
        conn = Connection(device_endpoint(device), device.link)
    except TransportError as exc:
        say(error=str(exc))
        return
    forward = Forward(conn.client.get_transport(), request["port"], device.link.stall_timeout,
                      device.link.connect_timeout, on_stall=lambda message: say(fault=message))
    say(port=forward.port)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    while conn.active and not forward.stalled:
        time.sleep(0.2)
    if not forward.stalled:
        say(fault=f"the SSH connection to {device.host}:{device.port} was lost")
    forward.close()
    conn.close()


if __name__ == "__main__":
    _serve()
