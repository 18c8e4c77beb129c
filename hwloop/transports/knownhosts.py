"""What an OpenSSH ``known_hosts`` file says about one host, read as OpenSSH reads it.

paramiko's own reader raises on lines it cannot parse (``@cert-authority``, ``@revoked``, a broken
key) and files one key per host whatever its type. Here, for the host asked about:

- the first key of each type filed for it counts (plain names, hashed ``|1|`` names, ``*``/``?``
  patterns and ``!`` negations, as OpenSSH matches them);
- a key on a ``@revoked`` line is refused, wherever else it is listed;
- ``@cert-authority`` lines are counted and left out (hwloop does not check host certificates);
- a line that cannot be read is skipped and noted with its line number.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from .errors import TransportError


@dataclass
class KnownHosts:
    """The keys ``path`` files for the host ``name`` (``host`` or ``[host]:port``)."""

    path: Path
    name: str
    keys: dict[str, tuple[paramiko.PKey, int]] = field(default_factory=dict)  # key type -> (key, line)
    revoked: dict[bytes, int] = field(default_factory=dict)  # key blob -> line
    skipped: list[str] = field(default_factory=list)  # "line N (why)"
    authorities: int = 0  # @cert-authority lines for the host

    def revoked_line(self, key: paramiko.PKey) -> int | None:
        return self.revoked.get(key.asbytes())

    def known(self, key: paramiko.PKey) -> bool:
        same = self.keys.get(key.get_name())
        return same is not None and same[0].asbytes() == key.asbytes()

    def listed(self) -> str:
        """The keys filed for the host, in words."""
        return ", ".join(f"{key.get_name()} {key.fingerprint} (line {line})" for key, line in self.keys.values())

    def notes(self) -> list[str]:
        """What was left out of the file, in words."""
        notes = []
        if self.skipped:
            notes.append(f"{self.path}: skipped what hwloop cannot read: {', '.join(self.skipped)}")
        if self.authorities:
            notes.append(
                f"{self.path} has @cert-authority lines for {self.name}: hwloop does not check host "
                "certificates, trust the board's own key"
            )
        return notes


def read_known_hosts(path: Path, name: str) -> KnownHosts:
    """The keys ``path`` files for ``name``; an absent file files none."""
    known = KnownHosts(path, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return known
    except OSError as exc:
        raise TransportError(f"{path}: cannot read the known_hosts file: {exc.strerror or exc}") from None
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            known.skipped.append(f"line {number} (not UTF-8)")
            continue
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, "@revoked", "@cert-authority"):
            known.skipped.append(f"line {number} (unknown marker {marker[:40]!r})")
            continue
        if len(fields) < 3:
            known.skipped.append(f"line {number} (expected host names, a key type and a key)")
            continue
        names, key_type, blob = fields[:3]
        if not _matches(names, name):
            continue
        if marker == "@cert-authority":
            known.authorities += 1
            continue
        try:
            key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob, validate=True))
        except Exception as exc:  # noqa: BLE001 - a broken key is skipped, whatever its parser raises
            known.skipped.append(f"line {number} ({key_type[:40]} key unreadable: {type(exc).__name__})")
            continue
        if marker == "@revoked":
            known.revoked.setdefault(key.asbytes(), number)
        else:
            known.keys.setdefault(key.get_name(), (key, number))
    known.keys = {kind: entry for kind, entry in known.keys.items() if entry[0].asbytes() not in known.revoked}
    return known


def _matches(names: str, host: str) -> bool:
    """Whether the comma-separated patterns ``names`` of a line match ``host`` (a negated match wins)."""
    hit = False
    for pattern in names.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            try:
                matched = paramiko.HostKeys.hash_host(host, pattern) == pattern
            except Exception:  # noqa: BLE001 - a malformed hash matches nothing
                matched = False
        else:
            matched = (
                re.fullmatch(
                    "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                    host,
                    re.IGNORECASE,
                )
                is not None
            )
        if matched and negated:
            return False
        hit = hit or matched
    return hit
