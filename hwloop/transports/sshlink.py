"""SSH connections to boards: ``~/.ssh/config`` aliases and ProxyJump, verified host keys, explicit
timeouts, keepalive and ``TCP_USER_TIMEOUT`` so that a dead link is noticed in seconds.

Host keys are checked against the device's ``known_hosts`` file, else ``UserKnownHostsFile`` from
``~/.ssh/config``, else ``~/.ssh/known_hosts`` (read by :mod:`knownhosts`). An unknown, changed or
revoked key is refused; ``hwloop devices trust`` records one only when asked. Passwords are never
used: keys come from the device's ``key``, the config's ``IdentityFile``, the default key files or
an SSH agent.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ..registry import Device, Link
from .errors import TransportError
from .knownhosts import KnownHosts, read_known_hosts

SSH_ERRORS = (paramiko.SSHException, OSError, EOFError)
RSA_SIGNATURES = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}  # how an RSA host key is asked for


class HostKeyError(TransportError):
    """A board whose host key is not known, or not the one known."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in, after ``~/.ssh/config`` is applied."""

    alias: str
    hostname: str
    port: int
    user: str | None
    keys: tuple[str, ...]
    known_hosts: Path
    jump: str | None = None

    @property
    def known_name(self) -> str:
        """The name this board's key is filed under in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config() -> paramiko.SSHConfig:
    path = Path.home() / ".ssh" / "config"
    return paramiko.SSHConfig.from_path(str(path)) if path.is_file() else paramiko.SSHConfig()


def endpoint(
    host: str, port: int | None = None, user: str | None = None, key: str | None = None, known_hosts: str | None = None
) -> Endpoint:
    """``host`` resolved through ``~/.ssh/config``; explicit arguments win over the config."""
    config = _ssh_config().lookup(host)
    files = [key] if key else config.get("identityfile", [])
    known = known_hosts or (config.get("userknownhostsfile", "").split() or ["~/.ssh/known_hosts"])[0]
    jump = config.get("proxyjump")
    return Endpoint(
        alias=host,
        hostname=config.get("hostname", host),
        port=port if port not in (None, 22) else int(config.get("port", 22)),
        user=user or config.get("user"),
        keys=tuple(os.path.expanduser(f) for f in files),
        known_hosts=Path(os.path.expanduser(known)),
        jump=None if jump in (None, "none") else jump,
    )


def device_endpoint(device: Device) -> Endpoint:
    return endpoint(device.host, device.port, device.user, device.key, device.known_hosts)


def _jump_endpoint(spec: str, known_hosts: Path) -> Endpoint:
    """``[user@]host[:port]`` of a ProxyJump hop, itself looked up in ``~/.ssh/config``."""
    user, _, hostport = spec.rpartition("@")
    host, _, port = hostport.partition(":")
    found = endpoint(host, int(port) if port else None, user or None)
    return (
        found
        if _ssh_config().lookup(host).get("userknownhostsfile")
        else Endpoint(found.alias, found.hostname, found.port, found.user, found.keys, known_hosts, found.jump)
    )


def _tcp(hostname: str, port: int, link: Link) -> socket.socket:
    sock = socket.create_connection((hostname, port), timeout=link.connect_timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(3 * link.keepalive * 1000))
    return sock


def _socket_to(ep: Endpoint, link: Link, hops: list[paramiko.SSHClient]):
    """A socket to ``ep``: TCP, or a channel through its ProxyJump hops (logged into and kept in ``hops``)."""
    chain = [_jump_endpoint(spec.strip(), ep.known_hosts) for spec in ep.jump.split(",")] if ep.jump else []
    chain.append(ep)
    sock = _tcp(chain[0].hostname, chain[0].port, link)
    for hop, after in zip(chain, chain[1:]):
        hops.append(_login(hop, link, sock))
        sock = (
            hops[-1]
            .get_transport()
            .open_channel("direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0), timeout=link.connect_timeout)
        )
    return sock


class _Refuse(paramiko.MissingHostKeyPolicy):
    """Refuses a key the known_hosts file does not file for the host (a revoked one, naming its line)."""

    def __init__(self, ep: Endpoint, known: KnownHosts):
        self.ep, self.known, self.key = ep, known, None

    def missing_host_key(self, client, hostname, key):
        self.key = key
        _refuse_revoked(self.ep, self.known, key)
        raise paramiko.SSHException("host key not known")


def _refuse_revoked(ep: Endpoint, known: KnownHosts, key: paramiko.PKey) -> None:
    line = known.revoked_line(key)
    if line is not None:
        raise HostKeyError(
            f"{ep.alias}: the host key {describe(key)} of {ep.known_name} is REVOKED "
            f"({ep.known_hosts} line {line}); connection refused"
        )


def _notes(known: KnownHosts) -> str:
    return "".join(f"; {note}" for note in known.notes())


def _login(ep: Endpoint, link: Link, sock) -> paramiko.SSHClient:
    known = read_known_hosts(ep.known_hosts, ep.known_name)
    client = paramiko.SSHClient()
    for key, _ in known.keys.values():
        client.get_host_keys().add(ep.known_name, key.get_name(), key)
    policy = _Refuse(ep, known)
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(
            ep.hostname,
            ep.port,
            username=ep.user,
            key_filename=list(ep.keys) or None,
            look_for_keys=not ep.keys,
            allow_agent=True,
            sock=sock,
            timeout=link.connect_timeout,
            banner_timeout=link.connect_timeout,
            auth_timeout=link.connect_timeout,
            channel_timeout=link.connect_timeout,
        )
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        _refuse_revoked(ep, known, exc.key)
        if exc.key.get_name() not in known.keys:
            raise HostKeyError(
                f"{ep.alias}: unknown host key {describe(exc.key)} for {ep.known_name}: {ep.known_hosts} files only "
                f"{known.listed()} for it, a type the board no longer offers (reinstalled?); connection "
                f"refused{_notes(known)}"
            ) from None
        raise HostKeyError(
            f"{ep.alias}: the host key CHANGED: it offers {describe(exc.key)}, {ep.known_hosts} has "
            f"{describe(exc.expected_key)} (line {known.keys[exc.key.get_name()][1]}) for {ep.known_name}. Someone "
            f"may be intercepting the connection; if the board was reinstalled, remove the old key (ssh-keygen -R "
            f"'{ep.known_name}' -f {ep.known_hosts}) and trust the new one"
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise TransportError(
            f"{ep.alias}: key {', '.join(ep.keys)} is encrypted: load it into your SSH agent "
            f"(ssh-add {' '.join(ep.keys)}); passwords are never read from the registry"
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise TransportError(
            f"{ep.alias}: SSH login as {ep.user!r} refused ({exc}); check `user` and `key` (or your SSH agent)"
        ) from None
    except paramiko.SSHException:
        client.close()
        if policy.key is not None:
            raise HostKeyError(
                f"{ep.alias}: unknown host key {describe(policy.key)} for {ep.known_name} "
                f"(not in {ep.known_hosts}); connection refused{_notes(known)}"
            ) from None
        raise
    client.get_transport().set_keepalive(max(1, int(link.keepalive)))
    return client


class Connection:
    """A logged-in SSH client and the ProxyJump hops under it; close it to close them all."""

    def __init__(self, ep: Endpoint, link: Link):
        self.endpoint, self.link, self._hops = ep, link, []
        try:
            self.client = _login(ep, link, _socket_to(ep, link, self._hops))
        except (ConnectionRefusedError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
            self.close()
            raise TransportError(
                f"{ep.alias}: cannot connect to {ep.hostname}:{ep.port} ({exc.strerror or exc}); "
                "is the board up and its sshd running?"
            ) from None
        except TimeoutError as exc:
            self.close()
            raise TransportError(
                f"{ep.alias}: no answer from {ep.hostname}:{ep.port} within "
                f"{link.connect_timeout:g} s ({type(exc).__name__})"
            ) from None
        except TransportError:
            self.close()
            raise
        except SSH_ERRORS as exc:
            self.close()
            raise TransportError(
                f"{ep.alias}: SSH connection to {ep.hostname}:{ep.port} failed: {type(exc).__name__}: {exc}"
            ) from None

    @property
    def active(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport and transport.is_active())

    def close(self) -> None:
        for client in [getattr(self, "client", None), *reversed(self._hops)]:
            if client is not None:
                client.close()


def describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def scan(ep: Endpoint, link: Link, prefer: list[str] | tuple[str, ...] = ()) -> paramiko.PKey:
    """The host key ``ep`` offers, read without logging in (hops are verified as usual); of a type in
    ``prefer`` (the types known for it) when the board has one, as a login asks."""
    hops: list[paramiko.SSHClient] = []
    try:
        sock = _socket_to(ep, link, hops)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = link.connect_timeout
        options = transport.get_security_options()
        wanted = [t for kind in prefer for t in RSA_SIGNATURES.get(kind, (kind,)) if t in options.key_types]
        options.key_types = [*wanted, *(t for t in options.key_types if t not in wanted)]
        try:
            transport.start_client(timeout=link.connect_timeout)
            return transport.get_remote_server_key()
        finally:
            transport.close()
    except TransportError:
        raise
    except SSH_ERRORS as exc:
        raise TransportError(
            f"{ep.alias}: cannot read the host key of {ep.hostname}:{ep.port}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for hop in hops:
            hop.close()


def record(ep: Endpoint, key: paramiko.PKey) -> None:
    """Append ``key`` for this board to ``ep.known_hosts`` (created 0600 in a 0700 folder)."""
    ep.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = paramiko.hostkeys.HostKeyEntry([ep.known_name], key).to_line()
    fd = os.open(ep.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        if f.tell() and not ep.known_hosts.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(line)
