"""The device registry: ``*.yaml`` files of devices and groups, plus the built-in ``local`` device (and
``local-gpu``, this machine's NVIDIA GPU, when ``nvidia-smi`` lists one).

A file has an optional ``groups:`` mapping (group name → default fields) and a ``devices:`` mapping
(device name → fields; ``group: NAME`` inherits the group's fields, the device's own win, and
``protocol`` and ``link`` merge field by field). Groups are shared by every file of the registry.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SECRETS = ("password", "passphrase")
NO_SECRETS = "passwords are never stored in the registry: use `key:` (a private key file) or an SSH agent"
RESERVED = {
    "name": "a device's name is its key under `devices:`",
    "source": "set by hwloop to the file a device comes from, not written in files",
    "group": "groups do not nest",
}


class RegistryError(ValueError):
    """A registry hwloop cannot use; the message names the file, the device or group, and the field."""


class Protocol(BaseModel):
    """How a device times a kernel, with TVM ``time_evaluator`` semantics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup: int = Field(10, ge=0, description="untimed runs before each trial")
    number: int = Field(10, ge=1, description="runs averaged in one repeat")
    repeat: int = Field(10, ge=1, description="repeats in one trial; a trial's latency is their `statistic`")
    min_repeat_ms: int = Field(10, ge=0, description="TVM raises `number` until a repeat lasts this long")
    cooldown_ms: int = Field(0, ge=0, description="pause between repeats")
    statistic: Literal["min", "median"] = Field(
        "min",
        description="a trial's latency from its repeats: `min`, the fastest (whatever shares the host only "
        "ever slows a repeat, and a neighbour that comes and goes within milliseconds spares some of "
        "them), or `median`",
    )
    threads: int = Field(1, ge=1, description="runtime threads (TVM_NUM_THREADS)")
    cpus: list[int] | None = Field(None, min_length=1, description="CPUs the runtime is pinned to (taskset)")
    trials: int = Field(
        3,
        ge=1,
        description="independent trials (fresh buffers, interleaved with the other "
        "configs of a batch) that must agree before a measurement settles",
    )
    max_trials: int = Field(
        9,
        ge=1,
        description="trials taken at most when they do not agree; the latency is "
        "the mean of the trials' latencies (from 5 trials on, the fastest "
        "and the slowest left out)",
    )
    agree: float = Field(
        0.02, gt=0, description="trials agree when each one's latency lies within this share of the median of them all"
    )
    max_wait: float = Field(
        0.02,
        ge=0,
        description="a trial in which the timing process waited for its CPU "
        "longer than this share of the time (another process ran "
        "there) is disturbed, dropped and taken again",
    )
    max_steal: float = Field(0.02, ge=0, description="likewise for time the hypervisor stole from the timing CPUs")
    max_disturbed: int = Field(
        6,
        ge=0,
        description="disturbed trials dropped at most per measurement (the pause "
        "before a retake doubles each time); later ones are kept and "
        "the row is not quiet",
    )
    flush: bool = Field(
        False,
        description="CPU devices: before every timed run, flush from the caches every argument but the "
        "input (a layer's weights and output start cold, as in a whole model whose other layers ran "
        "in between); needs number 1 and min_repeat_ms 0",
    )
    sentinel: float | None = Field(
        default_factory=lambda fields: 1.1 if fields.get("threads", 1) == 1 else 1.25,
        gt=1,
        description="between rounds of trials, time a fixed small conv built for the device's target; a "
        "round before and after which it ran more than this factor slower than its fastest (in the session, or as the "
        "table's rows recorded it) is disturbed, dropped and taken again (a state of the host that slows "
        "every kernel at once, which the trials of one measurement agree on); by default 1.1 on one thread "
        "and 1.25 on several, whose readings spread by up to 1.2× on a calm host; null: no sentinel (not "
        "part of the protocol's identity)",
    )
    batch: int = Field(8, ge=1, description="configs (or models) measured together, their trials interleaved")
    passes: int = Field(
        1,
        ge=1,
        description="sweeps of a layer collection, one after another, each measuring every "
        "config; the predictor keeps each config's fastest (not part of the "
        "protocol's identity: every pass's rows count alike)",
    )
    retake_scattered: bool = Field(
        True,
        description="measure once more, at the end of a layer collection, each config whose trials "
        "disagreed by more than ±10 %; the predictor learns the retake where its trials agree "
        "(not part of the protocol's identity)",
    )

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, cpus: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if cpus is None:
            return None
        if min(cpus) < 0:
            raise ValueError("CPU numbers are non-negative")
        if len(set(cpus)) != len(cpus):
            raise ValueError("each CPU is listed once")
        threads = info.data.get("threads")
        if threads and threads > len(cpus):
            raise ValueError(f"threads ({threads}) exceeds the number of pinned cpus ({len(cpus)})")
        return cpus

    @field_validator("max_trials")
    @classmethod
    def _max_trials(cls, max_trials: int, info: ValidationInfo) -> int:
        trials = info.data.get("trials")
        if trials and max_trials < trials:
            raise ValueError(f"max_trials ({max_trials}) is below trials ({trials})")
        return max_trials

    @model_validator(mode="after")
    def _flush_each_run(self) -> "Protocol":
        if self.flush and (self.number != 1 or self.min_repeat_ms != 0):
            raise ValueError(
                f"flush empties the caches once per repeat: it needs number 1 and min_repeat_ms 0 "
                f"(not {self.number} and {self.min_repeat_ms}), so that every timed run starts cold"
            )
        return self


class Link(BaseModel):
    """How hwloop talks to a remote board: timeouts, retries and the board's work folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(10.0, gt=0, description="seconds for the TCP connect, the SSH banner and auth")
    keepalive: float = Field(
        5.0,
        gt=0,
        description="seconds between keepalives; unacknowledged data for 3x this drops the link (TCP_USER_TIMEOUT)",
    )
    start_timeout: float = Field(120.0, gt=0, description="seconds for the board's RPC server to start (import tvm)")
    stall_timeout: float = Field(
        300.0, gt=0, description="seconds the board may leave a request unanswered before it is declared hung"
    )
    retries: int = Field(3, ge=0, description="reconnects tried after a fault before the board is given up")
    backoff: float = Field(1.0, ge=0, description="seconds before the first reconnect, doubled each time")
    session_timeout: float = Field(
        3600.0,
        gt=0,
        description="tracker devices: seconds a session may last; the board "
        "then ends it (a board held by a hung or vanished client "
        "returns to the pool) and the next one is requested",
    )
    workdir: str = Field(
        ".cache/hwloop-board",
        min_length=1,
        description="the boards' work folders, relative to the SSH user's home: one sub-folder "
        "per device, removed when hwloop is done, and the board's lock",
    )

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, workdir: str) -> str:
        parts = PurePosixPath(workdir).parts
        if workdir.startswith(("/", "~")):
            raise ValueError(
                f"{workdir!r} must be relative to the SSH user's home (hwloop deletes the work folders "
                "it makes there), e.g. '.cache/hwloop-board'"
            )
        if ".." in parts:
            raise ValueError(f"{workdir!r} must stay inside the SSH user's home: no '..'")
        return workdir


class Device(BaseModel):
    """A board hwloop measures on: how to reach it, what to compile for it, how to time on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    transport: Literal["local", "ssh", "tracker"]
    host: str | None = Field(None, validate_default=True)
    port: int = Field(22, ge=1, le=65535)
    user: str | None = Field(None, validate_default=True)
    key: str | None = None
    known_hosts: str | None = None
    python: str = "python3"
    target: dict[str, Any]
    cc: str | None = None
    protocol: Protocol = Protocol()
    link: Link = Link()
    pool: str | None = None
    group: str | None = None
    description: str | None = None
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ssh_when_host(cls, data: Any) -> Any:
        if isinstance(data, dict) and "transport" not in data and data.get("host"):
            return {**data, "transport": "ssh"}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError("a device name is letters, digits, '.', '_' and '-', starting with a letter or digit")
        return name

    @field_validator("host", "user", "key")
    @classmethod
    def _fits_transport(cls, value: str | None, info: ValidationInfo) -> str | None:
        transport = info.data.get("transport")
        if transport == "tracker" and info.field_name != "host":
            return value
        if transport in ("ssh", "tracker") and info.field_name != "key" and not value:
            raise ValueError(f"an {transport} device needs `{info.field_name}`")
        if transport == "local" and value is not None:
            raise ValueError(f"a local device has no `{info.field_name}`")
        return value

    @field_validator("pool")
    @classmethod
    def _pool(cls, pool: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("transport") == "tracker" and not pool:
            raise ValueError("a tracker device needs `pool`: the key its RPC servers registered with")
        if info.data.get("transport") != "tracker" and pool is not None:
            raise ValueError("`pool` is the RPC tracker key of a `transport: tracker` device")
        return pool

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, target: Any) -> Any:
        example = "{kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a72}"
        if isinstance(target, str):
            raise ValueError(f"a TVM target is a mapping, not a string: write e.g. {example}")
        if isinstance(target, dict) and not (isinstance(target.get("kind"), str) and target["kind"]):
            raise ValueError(f"a TVM target needs a string `kind` (llvm, cuda, nvptx, ...), e.g. {example}")
        try:
            json.dumps(target)
        except (TypeError, ValueError):
            raise ValueError("a TVM target holds only strings, numbers, booleans, lists and mappings") from None
        return target

    @field_validator("protocol")
    @classmethod
    def _flush_on_cpus(cls, protocol: Protocol, info: ValidationInfo) -> Protocol:
        kind = info.data.get("target", {}).get("kind")
        if protocol.flush and kind != "llvm":
            raise ValueError(f"`flush` empties CPU caches: a {kind!r} target cannot use it")
        return protocol


LOCAL = Device(
    name="local",
    transport="local",
    target={"kind": "llvm", "mcpu": "host"},
    protocol=Protocol(threads=1, cpus=[0]),
    description="this machine",
)
LOCAL_GPU = "local-gpu"


def nvidia_target(compute_capability: str) -> dict:
    """The TVM target of an NVIDIA GPU of ``compute_capability`` (``"9.0"`` is ``sm_90``), driven from
    this machine's CPU."""
    major, _, minor = compute_capability.strip().partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"not a compute capability: {compute_capability!r} (expected e.g. 8.7)")
    return {"kind": "nvptx", "mcpu": f"sm_{major}{minor}", "mtriple": "nvptx64-nvidia-cuda", "host": {"kind": "llvm"}}


@functools.lru_cache(maxsize=1)
def local_gpu() -> Device | None:
    """The built-in ``local-gpu`` device: this machine's first NVIDIA GPU, when ``nvidia-smi`` lists one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-i", "0", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        name, capability = listed.stdout.splitlines()[0].rsplit(",", 1)
        target = nvidia_target(capability)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None  # no nvidia-smi, no GPU, or an answer it could not give
    return Device(
        name=LOCAL_GPU,
        transport="local",
        target=target,
        protocol=Protocol(threads=1, cpus=[0]),
        description=f"this machine's GPU 0: {name.strip()} ({target['mcpu']})",
    )


NESTED: dict[str, type[BaseModel]] = {"protocol": Protocol, "link": Link}


@dataclass(frozen=True)
class Registry:
    """Devices by name (``local`` included) and the device names of each group."""

    devices: dict[str, Device]
    groups: dict[str, list[str]]

    def get(self, name: str) -> Device:
        if name not in self.devices:
            raise RegistryError(f"unknown device {name!r}; known devices: {', '.join(self.devices)}")
        return self.devices[name]

    def select(self, names: Iterable[str]) -> list[Device]:
        """Devices named directly or through their group, in order, each once."""
        chosen: dict[str, Device] = {}
        for name in [names] if isinstance(names, str) else names:
            if name in self.groups:
                chosen.update((member, self.devices[member]) for member in self.groups[name])
            elif name in self.devices:
                chosen[name] = self.devices[name]
            else:
                raise RegistryError(
                    f"unknown device or group {name!r}; known devices: {', '.join(self.devices)}; "
                    f"groups: {', '.join(self.groups) or 'none'}"
                )
        return list(chosen.values())


def load_registry(directory: str | Path | None = None) -> Registry:
    """The registry in ``directory``, else ``$HWLOOP_REGISTRY``, else ``./devices`` if it exists."""
    if directory is None:
        directory = os.environ.get("HWLOOP_REGISTRY") or (Path("devices") if Path("devices").is_dir() else None)
    files: list[Path] = []
    if directory is not None:
        directory = Path(directory)
        if not directory.is_dir():
            raise RegistryError(f"{directory}: registry folder does not exist")
        files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    documents = [(path, _read(path)) for path in files]
    groups = _groups(documents)

    devices = {"local": LOCAL}
    if local_gpu() is not None:
        devices[LOCAL_GPU] = local_gpu()
    sources: dict[str, Path] = {}
    members: dict[str, list[str]] = {name: [] for name in groups}
    for path, doc in documents:
        for name, fields in doc["devices"].items():
            if name in sources:
                raise RegistryError(f"{path}: device {name!r}: also defined in {sources[name]}")
            device = _device(path, name, fields, groups)
            devices[name], sources[name] = device, path
            if device.group:
                members[device.group].append(name)
    for name in groups:
        if name in devices:
            raise RegistryError(
                f"{groups[name][0]}: group {name!r}: a device has the same name; group and device names must differ"
            )
    return Registry(devices, members)


def _read(path: Path) -> dict[str, dict]:
    """A file's ``devices`` and ``groups`` mappings (empty when absent)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = "; ".join(filter(None, (exc.context, exc.problem)))
        raise RegistryError(f"{path}:{where} not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RegistryError(
            f"{path}: the top level must be a mapping with `devices:` (and optional `groups:`), "
            f"not a {type(doc).__name__}"
        )
    unknown = sorted(map(str, set(doc) - {"devices", "groups"}))
    if unknown:
        raise RegistryError(
            f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            "expected `devices:` and optional `groups:`"
        )
    for section in ("devices", "groups"):
        doc[section] = doc.get(section) or {}
        if not isinstance(doc[section], dict):
            raise RegistryError(f"{path}: `{section}:` must be a mapping of names to fields")
        for name in doc[section]:
            if not isinstance(name, str):
                raise RegistryError(f"{path}: {section[:-1]} {name!r}: names are strings (quote it)")
    return doc


def _groups(documents: list[tuple[Path, dict]]) -> dict[str, tuple[Path, dict]]:
    """Every group's file and default fields, checked for what a group may not hold."""
    groups: dict[str, tuple[Path, dict]] = {}
    for path, doc in documents:
        for name, fields in doc["groups"].items():
            where = f"{path}: group {name!r}"
            if name in groups:
                raise RegistryError(f"{where}: also defined in {groups[name][0]}")
            if not isinstance(fields, dict):
                raise RegistryError(f"{where}: expected a mapping of default fields")
            _refuse(where, fields, ("name", "source", "group"))
            for key in fields:
                if key not in Device.model_fields:
                    raise RegistryError(f"{where}: field {key!r}: {_unknown(Device)}")
            groups[name] = (path, fields)
    return groups


def _device(path: Path, name: str, fields: Any, groups: dict[str, tuple[Path, dict]]) -> Device:
    """The device ``name`` of file ``path``, with its group's defaults filled in."""
    where = f"{path}: device {name!r}"
    if not isinstance(fields, dict):
        raise RegistryError(f"{where}: expected a mapping of fields")
    _refuse(where, fields, ("name", "source"))
    merged, defaults, origin, group = dict(fields), {}, "", fields.get("group")
    if group is not None:
        if not isinstance(group, str) or group not in groups:
            raise RegistryError(
                f"{where}: field 'group': no group {group!r} in the registry "
                f"(groups: {', '.join(map(str, groups)) or 'none'})"
            )
        group_path, defaults = groups[group]
        origin = f" (inherited from group {group!r} in {group_path})"
        for section in NESTED:
            if isinstance(defaults.get(section), dict) and isinstance(fields.get(section), dict):
                merged[section] = {**defaults[section], **fields[section]}
        merged = {**defaults, **merged}
    try:
        return Device.model_validate({**merged, "name": name, "source": str(path)})
    except ValidationError as exc:
        raise RegistryError(
            "\n".join(
                f"{where}: field {'.'.join(map(str, e['loc']))!r}: {_message(e)}"
                f"{origin if _inherited(e['loc'], fields, defaults) else ''}"
                for e in exc.errors()
                if e["type"] != "default_factory_not_called"  # a default left out because of another field
            )
        ) from None


def _refuse(where: str, fields: dict, reserved: tuple[str, ...]) -> None:
    for key in fields:
        if key in SECRETS:
            raise RegistryError(f"{where}: field {key!r}: {NO_SECRETS}")
        if key in reserved:
            raise RegistryError(f"{where}: field {key!r}: {RESERVED[key]}")


def _inherited(loc: tuple, own: dict, defaults: dict) -> bool:
    """Whether the value at ``loc`` came from the group rather than the device's own fields."""
    if not loc or loc[0] not in defaults:
        return False
    if loc[0] not in own:
        return True
    nested = own[loc[0]], defaults[loc[0]]
    return (
        loc[0] in NESTED
        and len(loc) > 1
        and all(isinstance(n, dict) for n in nested)
        and loc[1] not in nested[0]
        and loc[1] in nested[1]
    )


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown(NESTED.get(error["loc"][0], Device))
    return error["msg"].removeprefix("Value error, ")


def _unknown(model: type[BaseModel]) -> str:
    known = [name for name in model.model_fields if name not in ("name", "source")]
    return f"unknown field (known fields: {', '.join(known)})"
