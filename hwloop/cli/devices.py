"""``hwloop devices``: list, show and check the registered devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from .app import CacheOpt, JsonOpt, RegistryOpt, app, err, fail, get_device, load_registry, out

devices_app = typer.Typer(no_args_is_help=True, help="Registered devices: list, show, trust and check them.")
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def list_devices(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List every registered device (the built-in [bold]local[/] and, with an NVIDIA GPU, [bold]local-gpu[/])."""
    devices = load_registry(registry).devices.values()
    if as_json:
        out.print_json(json.dumps([d.model_dump(mode="json") for d in devices]))
        return
    table = Table("name", "transport", "host", "target", "group", "file")
    for d in devices:
        target = " ".join(str(d.target[k]) for k in ("kind", "mtriple", "mcpu") if k in d.target)
        table.add_row(
            d.name, d.transport, d.host or "", target, d.group or "", Path(d.source).name if d.source else "built-in"
        )
    out.print(table)


@devices_app.command("show")
def show(name: str, registry: RegistryOpt = None) -> None:
    """Show one device with its defaults filled in and its target resolved."""
    from ..targets import resolve

    device = get_device(name, registry)
    record = device.model_dump(mode="json")
    record["resolved_target"] = resolve(device.target, device.protocol.threads)
    out.print_json(json.dumps(record))


@devices_app.command("check")
def check(name: str, registry: RegistryOpt = None, cache: CacheOpt = None, as_json: JsonOpt = False) -> None:
    """Build a small conv for the device, run it there, check it against torch and time it."""
    from ..check import smoke_check
    from ..transports import TransportError

    device = get_device(name, registry)
    with err.status(f"checking {name}: build, upload, check against torch, time"):
        try:
            report = smoke_check(device, cache or default_cache_dir())
        except TransportError as exc:
            fail(str(exc))
    if as_json:
        out.print_json(json.dumps(report, default=str))
    elif report["ok"]:
        fp = report["fingerprint"]
        gpu = device.target["kind"] != "llvm" and fp.get("gpu_name")
        where = f"{fp['gpu_name']} (driver {fp.get('gpu_driver') or 'unknown'}), host " if gpu else ""
        out.print(
            f"[green]ok[/] {name}: {report['config']} ran correctly in {report['latency_ms']:.4f} ms "
            f"(cv {report['latency_cv']:.3f}) on {where}{fp['cpu_model']} ({fp['arch']}, {fp['cores']} cores)"
        )
    else:
        out.print(
            f"[red]failed[/] {name} at {report['stage']}: {escape(report['error'])}", highlight=False, emoji=False
        )
    if not report["ok"]:
        raise typer.Exit(1)


@devices_app.command("trust")
def trust(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Record the key without asking.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Show an SSH board's host key fingerprint and record it in known_hosts when you confirm.

    hwloop refuses boards whose host key is unknown or changed; compare the fingerprint with the
    board's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the board) before trusting it.
    """
    from ..transports import TransportError
    from ..transports.knownhosts import read_known_hosts
    from ..transports.sshlink import describe, device_endpoint, record, scan

    device = get_device(name, registry)
    if device.transport != "ssh":
        fail(f"device {name!r} uses transport {device.transport!r}; only ssh devices have host keys")
    ep = device_endpoint(device)
    try:
        known = read_known_hosts(ep.known_hosts, ep.known_name)
        key = scan(ep, device.link, prefer=list(known.keys))
    except TransportError as exc:
        fail(str(exc))
    revoked = known.revoked_line(key)
    if revoked is not None:
        fail(
            f"{name}: the host key {describe(key)} of {ep.known_name} is REVOKED ({ep.known_hosts} line {revoked}); "
            "it is not trusted again"
        )
    if known.known(key):
        out.print(f"{name}: {ep.known_name} is already trusted ({describe(key)}) in {ep.known_hosts}")
        return
    same_type = known.keys.get(key.get_name())
    if same_type is not None:
        fail(
            f"{name}: the host key of {ep.known_name} CHANGED: it offers {describe(key)}, {ep.known_hosts} has "
            f"{describe(same_type[0])} (line {same_type[1]}). If the board was reinstalled, remove the old key "
            f"(ssh-keygen -R '{ep.known_name}' -f {ep.known_hosts}) and run this again"
        )
    out.print(f"{name}: {ep.known_name} offers host key {describe(key)}", highlight=False)
    if known.keys:
        out.print(
            escape(
                f"note: {ep.known_hosts} files {known.listed()} for it, a type the board no longer "
                "offers (reinstalled?)"
            ),
            highlight=False,
        )
    for note in known.notes():
        out.print(f"note: {escape(note)}", highlight=False)
    try:
        confirmed = yes or typer.confirm(f"Trust it and add it to {ep.known_hosts}?", default=False)
    except typer.Abort:
        confirmed = False
    if not confirmed:
        fail("not trusted; nothing was written (use --yes to record it without asking)", code=1)
    record(ep, key)
    out.print(f"trusted: {ep.known_name} added to {ep.known_hosts}")
