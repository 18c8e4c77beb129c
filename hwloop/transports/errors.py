"""The errors a transport raises: what a caller catches to report a device it cannot use."""

from __future__ import annotations


class TransportError(RuntimeError):
    """A device that cannot be reached the way its registry entry says, or that was lost."""


class DeviceBusy(TransportError):
    """The device is held by another hwloop session (one session per board at a time)."""
