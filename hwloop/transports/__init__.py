"""Transports: how hwloop reaches a device's TVM RPC server and reads its fingerprint.

Every transport keeps the contract of :class:`~hwloop.transports.base.Transport`;
:func:`open_transport` starts the one a device's registry entry names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Transport
from .errors import DeviceBusy, TransportError

if TYPE_CHECKING:
    from ..registry import Device

__all__ = ["DeviceBusy", "Transport", "TransportError", "open_transport"]


def open_transport(device: Device) -> Transport:
    """A started transport for ``device``; close it when done (or use it as a context manager)."""
    if device.transport == "local":
        from .local import LocalTransport

        return LocalTransport(device.protocol, device.name, device.link)
    if device.transport == "ssh":
        from .ssh import SSHTransport

        return SSHTransport(device)
    from .tracker import TrackerTransport

    return TrackerTransport(device)
