"""A pool of identical boards behind TVM's RPC tracker (``python -m tvm.exec.rpc_tracker``).

Each board runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key POOL``; the device's
``host``/``port`` name the tracker and ``pool`` the key. Every session is requested from the tracker,
which hands out a free board of the pool (waited for at most ``link.start_timeout`` seconds) with a
one-time key the board then requires, so a fleet collection runs one worker per board of the pool
and they share one sweep. A session goes through a relay that watches for stalls (:mod:`forward`),
and lasts at most ``link.session_timeout`` seconds: the board then ends it, so that a board held by
a hung or vanished client returns to the pool. Rows carry no board fingerprint: which board served
a session is the tracker's choice and is not visible to the client.

The tracker and its boards are started by their owner, not by hwloop: anyone who can reach them can
request a board, so keep them on a network only you use.
"""

from __future__ import annotations

import socket
import struct
import time

from ..registry import Device
from .base import Transport, start_with_retries
from .errors import TransportError
from .forward import Tunnel

PRIORITY = 1


def _ask(device: Device, message: list, wait: float | None = None):
    """The tracker's answer to ``message`` (``wait`` seconds at most for it, else ``link.connect_timeout``)."""
    from tvm.rpc import base

    where = f"device {device.name!r}: the RPC tracker at {device.host}:{device.port} (fields 'host' and 'port')"
    try:
        with socket.create_connection((device.host, device.port), timeout=device.link.connect_timeout) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise TransportError(f"{where} is not an RPC tracker")
            base.sendjson(sock, message)
            sock.settimeout(wait or device.link.connect_timeout)
            answer = base.recvjson(sock)
    except TimeoutError:
        if wait:
            raise TransportError(
                f"device {device.name!r}: no board of pool {device.pool!r} became free within "
                f"{wait:g} s (link.start_timeout)"
            ) from None
        raise TransportError(f"{where} did not answer within {device.link.connect_timeout:g} s") from None
    except (OSError, RuntimeError, ValueError, struct.error) as exc:
        raise TransportError(f"{where} cannot be used: {type(exc).__name__}: {exc}") from None
    if not (isinstance(answer, list) and answer and answer[0] == base.TrackerCode.SUCCESS):
        raise TransportError(f"{where} answered {answer!r}")
    return answer[1] if len(answer) > 1 else None


def pool(device: Device) -> list[tuple[str, int]]:
    """The addresses (host, port) of the RPC servers the tracker has under the device's ``pool`` key."""
    from tvm.rpc.base import TrackerCode

    servers = (_ask(device, [TrackerCode.SUMMARY]) or {}).get("server_info", [])
    return [tuple(s.get("addr") or ()) for s in servers if str(s.get("key", "")).split(":", 1)[-1] == device.pool]


def pool_size(device: Device) -> int:
    """How many RPC servers the tracker has under the device's ``pool`` key."""
    return len(pool(device))


class TrackerTransport(Transport):
    """Sessions on the boards of one tracker pool; see the module docstring."""

    def __init__(self, device: Device):
        self.device, self.link = device, device.link
        self.where = f"device {device.name!r}"
        self.lost: str | None = None
        self._relay: Tunnel | None = None
        self._since: float | None = None
        self._board: tuple[str, int] | None = None  # the address of the board serving the session
        self._refused: str | None = None  # why the last session could not be opened
        self._require_pool()

    def _require_pool(self) -> None:
        device = self.device
        if pool_size(device) == 0:
            raise TransportError(
                f"{self.where}: the tracker at {device.host}:{device.port} has no RPC server under "
                f"key {device.pool!r} (field 'pool'); start them with `python -m tvm.exec.rpc_server "
                f"--tracker {device.host}:{device.port} --key {device.pool}`"
            )

    def connect(self):
        """A session on a free board of the pool (waiting ``link.start_timeout`` at most for one)."""
        from tvm import rpc
        from tvm.rpc.base import TrackerCode

        if self.fault(grace=0):
            self.reconnect()
        self._close_relay()
        try:
            host, port, key = _ask(
                self.device, [TrackerCode.REQUEST, self.device.pool, "", PRIORITY], wait=self.link.start_timeout
            )
            self._board = (host, port)
            self._relay = Tunnel.tcp(host, port, self.link.stall_timeout, self.link.connect_timeout)
            session = rpc.connect("127.0.0.1", self._relay.port, key=key, session_timeout=self.link.session_timeout)
        except TransportError as exc:
            self._refused = str(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - TVM raises TVMError/RuntimeError when the board refuses
            self._refused = f"the board the tracker handed out refused the session: {type(exc).__name__}: {exc}"
            raise
        self._since = time.monotonic()
        return session

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the session cannot be used now (no board free in time, a stall, its end at
        ``link.session_timeout``, its board gone from the pool, an empty pool, a tracker away), or
        ``None`` when it can. The pool is asked after the relay's ``grace`` seconds: time for the
        tracker to hear of a board whose server died (its connection to the tracker drops)."""
        if self.lost or self._refused:
            return self.lost or self._refused
        event = self._relay.fault(grace) if self._relay is not None else None
        if event:
            return event
        if self._since is not None and time.monotonic() - self._since >= self.link.session_timeout:
            return f"the session reached link.session_timeout ({self.link.session_timeout:g} s); its board ended it"
        try:
            boards = pool(self.device)
        except TransportError as exc:
            return str(exc)
        if not boards:
            return f"no RPC server left under key {self.device.pool!r}"
        if self._board is not None and self._board not in boards:
            host, port = self._board
            return f"the board at {host}:{port} that served the session left the pool (its RPC server exited)"
        return None

    def reconnect(self) -> None:
        """Drop the session; the next :meth:`connect` requests a board again once the pool has one
        (checked with bounded retries)."""
        reason = self.fault(grace=0) or "reconnect asked"
        self._close_relay()
        self.lost = self._refused = None
        failure = start_with_retries(self._require_pool, self.link, reason)
        if failure:
            self.lost = failure
            raise TransportError(f"{self.where}: {failure}")

    def _close_relay(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        self._since = self._board = None

    def fingerprint(self) -> dict:
        return {}

    def close(self) -> None:
        self._close_relay()
