"""``hwloop devices``: list, show and check the registered devices."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from .app import CacheOpt, JsonOpt, RegistryOpt, app, err, fail, get_device, load_registry, out

devices_app = typer.Typer(no_args_is_help=True, help="Registered devices: list, show and check them.")
app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def list_devices(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List every registered device (the built-in [bold]local[/] one included)."""
    devices = load_registry(registry).devices.values()
    if as_json:
        out.print_json(json.dumps([d.model_dump(mode="json") for d in devices]))
        return
    table = Table("name", "transport", "host", "target", "group", "file")
    for d in devices:
        target = " ".join(str(d.target[k]) for k in ("kind", "mtriple", "mcpu") if k in d.target)
        table.add_row(d.name, d.transport, d.host or "", target, d.group or "",
                      Path(d.source).name if d.source else "built-in")
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
def check(name: str, registry: RegistryOpt = None,
                  cache: CacheOpt = None,
                  as_json: JsonOpt = False) -> None:
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
        out.print(f"[green]ok[/] {name}: {report['config']} ran correctly in {report['latency_ms']:.4f} ms "
                  f"(cv {report['latency_cv']:.3f}) on {fp['cpu_model']} ({fp['arch']}, {fp['cores']} cores)")
    else:
        out.print(f"[red]failed[/] {name} at {report['stage']}: {escape(report['error'])}", highlight=False,
                  emoji=False)
    if not report["ok"]:
        raise typer.Exit(1)
