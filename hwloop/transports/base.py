"""The contract every transport keeps (local, SSH, tracker), on which hwloop's measuring sessions rely.

A transport is started by :func:`hwloop.transports.open_transport` and owns what serves one device:
a TVM RPC server that accepts only clients sending the transport's key (a fresh random one per
server start), a lock that keeps other hwloop sessions off the device while it is open, and a watch
that notices a device that stopped answering.

- ``connect()``: a new TVM RPC session (``tvm.rpc.RPCSession``), after a :meth:`reconnect` when
  ``fault()`` says the device was lost. TVM's servers serve one session at a time: drop a session
  before asking for the next.
- ``fingerprint()``: what the device is now (CPU, clocks, temperature, load); ``{}`` when unknown.
- ``fault(grace)``: why the device cannot be used now, or ``None`` when it can. Asked after a
  measurement failed, it tells a fault of the device or the link (retry on a fresh session) from a
  failure of the measured kernel (a row of its own). Waits up to ``grace`` seconds for a fault just
  being reported.
- ``reconnect()``: stop what is left and start again, ``link.retries`` times at most with
  ``link.backoff`` doubling; raises :class:`TransportError` when the device stays away.
- ``close()``: stop everything on the device and release it; also on leaving a ``with`` block.

Construction raises :class:`TransportError` (:class:`DeviceBusy` when another session holds the
device) when the device cannot be used at all.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import TransportError

if TYPE_CHECKING:
    from ..registry import Link


@runtime_checkable
class Transport(Protocol):
    """How hwloop reaches one device; see the module docstring for the contract."""

    def connect(self) -> Any:
        """A new TVM RPC session on the device."""
        ...

    def fingerprint(self) -> dict:
        """The device's fingerprint now (the last one read when it cannot be read now)."""
        ...

    def fault(self, grace: float = 1.0) -> str | None:
        """Why the device cannot be used now, or ``None`` when it can."""
        ...

    def reconnect(self) -> None:
        """Stop what is left and start again, with bounded retries; :class:`TransportError` when
        the device stays away."""
        ...

    def close(self) -> None:
        """Stop everything on the device and release it."""
        ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_key() -> str:
    """A fresh RPC key: TVM's server refuses a client whose handshake does not carry it."""
    return secrets.token_hex(16)


def start_with_retries(
    start: Callable[[], None], link: Link, reason: str, fatal: tuple[type[BaseException], ...] = ()
) -> str | None:
    """Call ``start`` until it succeeds, ``link.retries + 1`` times at most, ``link.backoff`` seconds
    apart and doubling; ``None`` once it succeeded, else why the device is lost. A ``fatal`` error
    (one that retrying cannot mend) is raised at once."""
    delay, last = link.backoff, None
    for attempt in range(link.retries + 1):
        if attempt:
            time.sleep(delay)
            delay *= 2
        try:
            start()
            return None
        except fatal:
            raise
        except TransportError as exc:
            last = exc
    return f"{reason}; {link.retries + 1} reconnects failed, the last: {last}"
