"""Transports: how hwloop reaches a device's TVM RPC server and reads its fingerprint."""

from __future__ import annotations

from ..registry import Device
from .local import LocalTransport


class TransportError(RuntimeError):
    """A device that cannot be reached the way its registry entry says."""


def open_transport(device: Device):
    """A started transport for ``device``; close it when done."""
    if device.transport == "local":
        return LocalTransport(device.protocol)
    if device.transport == "ssh":
        from .ssh import SSHTransport

        return SSHTransport(device)
    from .tracker import TrackerTransport

    return TrackerTransport(device)
