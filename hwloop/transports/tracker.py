"""A pool of identical boards behind TVM's RPC tracker (``python -m tvm.exec.rpc_tracker``).

Each board runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key POOL``; the device's
``host``/``port`` name the tracker and ``pool`` the key. Every session is requested from the tracker,
which hands out a free board of the pool, so a fleet collection runs one worker per board of the
pool and they share one sweep. Rows carry no board fingerprint: which board served a session is the
tracker's choice and is not visible to the client.
"""

from __future__ import annotations

from ..registry import Device
from . import TransportError


def _tracker(device: Device):
    from tvm import rpc

    try:
        return rpc.connect_tracker(device.host, device.port)
    except Exception as exc:  # noqa: BLE001 - TVM raises RuntimeError/TVMError/OSError here
        raise TransportError(f"device {device.name!r}: no RPC tracker at {device.host}:{device.port} "
                             f"(fields 'host' and 'port'): {exc}") from None


def pool_size(device: Device) -> int:
    """How many RPC servers the tracker has under the device's ``pool`` key."""
    servers = _tracker(device).summary().get("server_info", [])
    return sum(1 for s in servers if str(s.get("key", "")).split(":", 1)[-1] == device.pool)


class TrackerTransport:
    """Sessions on the boards of one tracker pool."""

    def __init__(self, device: Device):
        self.device = device
        if pool_size(device) == 0:
            raise TransportError(f"device {device.name!r}: the tracker at {device.host}:{device.port} has no RPC "
                                 f"server under key {device.pool!r} (field 'pool'); start them with "
                                 f"`python -m tvm.exec.rpc_server --tracker {device.host}:{device.port} "
                                 f"--key {device.pool}`")

    def connect(self):
        """A session on a free board of the pool (waits for one to be free)."""
        return _tracker(self.device).request(self.device.pool, session_timeout=0,
                                             max_retry=self.device.link.retries + 1)

    def fault(self) -> str | None:
        try:
            return None if pool_size(self.device) else f"no RPC server left under key {self.device.pool!r}"
        except TransportError as exc:
            return str(exc)

    def reconnect(self) -> None:
        """Sessions come from the tracker: raise when it has no board of the pool left."""
        fault = self.fault()
        if fault is not None:
            raise TransportError(f"device {self.device.name!r}: {fault}")

    def fingerprint(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> "TrackerTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
