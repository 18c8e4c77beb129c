"""The ``hwloop`` command line."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import tables as tables_mod
from .paths import cache_dir as default_cache_dir
from .schedules import POLICY_HELP

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich", add_completion=False,
                  help="Hardware-in-the-loop, latency-aware channel pruning: measure layers on your boards, "
                       "learn their latency, prune for it.")
devices_app = typer.Typer(no_args_is_help=True, help="Registered devices: list, show and check them.")
tables_app = typer.Typer(no_args_is_help=True, help="Measurement tables: show, export, compact.")
app.add_typer(devices_app, name="devices")
app.add_typer(tables_app, name="tables")

out = Console()
err = Console(stderr=True)

RegistryOpt = Annotated[Optional[Path], typer.Option(
    "--registry", help="Folder of device YAML files (default: $HWLOOP_REGISTRY, else ./devices).",
    show_default=False)]
TablesOpt = Annotated[Path, typer.Option("--tables", help="Folder of measurement tables, one sub-folder per device.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, emoji=False)
    raise typer.Exit(2)


def _registry(directory: Path | None):
    from .registry import RegistryError, load_registry

    try:
        return load_registry(directory)
    except RegistryError as exc:
        _fail(str(exc))


def _device(name: str, directory: Path | None):
    from .registry import RegistryError

    registry = _registry(directory)
    try:
        return registry.get(name)
    except RegistryError as exc:
        _fail(str(exc))


@devices_app.command("list")
def devices_list(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """List every registered device (the built-in [bold]local[/] one included)."""
    devices = _registry(registry).devices.values()
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
def devices_show(name: str, registry: RegistryOpt = None) -> None:
    """Show one device with its defaults filled in and its target resolved."""
    from .targets import resolve

    device = _device(name, registry)
    record = device.model_dump(mode="json")
    record["resolved_target"] = resolve(device.target, device.protocol.threads)
    out.print_json(json.dumps(record))


@devices_app.command("check")
def devices_check(name: str, registry: RegistryOpt = None,
                  cache: Annotated[Optional[Path], typer.Option(help="Build cache folder.")] = None,
                  as_json: JsonOpt = False) -> None:
    """Build a small conv for the device, run it there, check it against torch and time it."""
    from .check import smoke_check
    from .transports import TransportError

    device = _device(name, registry)
    with err.status(f"checking {name}: build, upload, check against torch, time"):
        try:
            report = smoke_check(device, cache or default_cache_dir())
        except TransportError as exc:
            _fail(str(exc))
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


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        _fail(f"--input-shape {text!r}: expected comma-separated integers such as 1,3,32,32")
    if not shape or min(shape) < 1:
        _fail(f"--input-shape {text!r}: dimensions must be positive")
    return shape


def _configs(model: str | None, space: Path | None, input_shape: str | None, samples: int, seed: int):
    from .models import ModelError, load_model
    from .space import SpaceError, load_space, model_space

    if (model is None) == (space is None):
        _fail("give exactly one of --model and --space")
    try:
        if space is not None:
            return load_space(space)
        module, shape = load_model(model, _parse_shape(input_shape))
        return model_space(module, shape, samples, seed)
    except (ModelError, SpaceError) as exc:
        _fail(str(exc))


@app.command()
def collect(
    device: Annotated[str, typer.Option("--device", "-d", help="Registered device name (see `hwloop devices list`).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Built-in model (resnet20, resnet56, resnet18, mobilenetv2) or path/to/file.py:callable; "
                              "its conv/linear layers give the space of channel counts a pruner could choose.")] = None,
    space: Annotated[Optional[Path], typer.Option("--space", "-s", help="YAML space file with a `layers:` list.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="Model input shape, e.g. 1,3,32,32 (required for a file).")] = None,
    samples: Annotated[int, typer.Option(help="Configs to sample from a model's space (each layer's dense config always).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    schedule: Annotated[str, typer.Option(help=f"Schedule policy: {POLICY_HELP}.")] = "default",
    tables: TablesOpt = Path("tables"),
    registry: RegistryOpt = None,
    cache: Annotated[Optional[Path], typer.Option(help="Build cache (default: $HWLOOP_CACHE, else ~/.cache/hwloop).",
                                                  show_default=False)] = None,
    force: Annotated[bool, typer.Option(help="Measure again configs already in the table.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build, check and time a space of layer configurations on a device; every result is kept.

    Resumable: a re-run measures only what is missing. Examples:

      hwloop collect --device local --model resnet20 --samples 60

      hwloop collect --device local --space docs/space.yaml --schedule tuned:64
    """
    from .collect import collect as run_collect
    from .schedules import PolicyError, parse_policy
    from .transports import TransportError

    dev = _device(device, registry)
    try:
        policy = parse_policy(schedule)
    except PolicyError as exc:
        _fail(str(exc))
    configs = _configs(model, space, input_shape, samples, seed)
    try:
        tables_mod.read(tables, dev.name)
    except tables_mod.TableError as exc:
        _fail(str(exc))

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} cfg/min"), TextColumn("[red]{task.fields[failed]} failed"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err)
    state = {"failed": 0}
    with progress:
        task = progress.add_task(f"{dev.name} · {policy.name}", total=None, rate="-", failed=0)

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_row(row: dict) -> None:
            state["failed"] += row["status"] != "ok"
            progress.advance(task)
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, failed=state["failed"],
                            rate=f"{progress.tasks[task].completed * 60 / elapsed:.1f}")

        try:
            summary = run_collect(dev, configs, policy, tables, cache or default_cache_dir(), force, on_start, on_row)
        except TransportError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            err.print(f"interrupted: every measurement written so far is kept in {tables_mod.device_dir(tables, dev.name)}; "
                      "run the same command again to measure the rest")
            raise typer.Exit(130) from None
    _print_summary(summary, tables, as_json)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(summary, tables: Path, as_json: bool) -> None:
    ok = [row for row in summary.rows if row["status"] == "ok"]
    record = {
        "device": summary.device, "schedule": summary.schedule, "planned": summary.planned,
        "skipped": summary.skipped, "measured": summary.measured, "failed": summary.failed,
        "wall_s": round(summary.wall_s, 2),
        "configs_per_min": round(len(summary.rows) * 60 / summary.wall_s, 2) if summary.rows else 0.0,
        "table": str(tables_mod.device_dir(tables, summary.device)),
        "failures": [{"config_id": r["config_id"], "stage": r["stage"], "error": r["error"]}
                     for r in summary.rows if r["status"] != "ok"],
    }
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table("op", "measured", "min ms", "median ms", "max ms", title=f"{summary.device} · {summary.schedule}")
    for op in sorted({row["op"] for row in ok}):
        latencies = [row["latency_ms"] for row in ok if row["op"] == op]
        table.add_row(op, str(len(latencies)), f"{min(latencies):.4f}", f"{statistics.median(latencies):.4f}",
                      f"{max(latencies):.4f}")
    if ok:
        out.print(table)
    out.print(f"planned {record['planned']}, already measured {record['skipped']}, measured now {record['measured']}, "
              f"failed {record['failed']} in {record['wall_s']:.1f} s ({record['configs_per_min']} configs/min) "
              f"→ {record['table']}")
    for failure in record["failures"][:10]:
        out.print(f"[red]failed[/] {failure['config_id']} at {failure['stage']}: {escape(failure['error'])}",
                  highlight=False, emoji=False)


def _read_table(tables: Path, device: str):
    try:
        return tables_mod.read(tables, device)
    except tables_mod.TableError as exc:
        _fail(str(exc))


@tables_app.command("show")
def tables_show(device: Annotated[Optional[str], typer.Argument(help="Device; all devices when omitted.")] = None,
                tables: TablesOpt = Path("tables"), as_json: JsonOpt = False) -> None:
    """Summarise the tables: rows, failures and latency range per device, schedule and op."""
    names = [device] if device else tables_mod.devices(tables)
    records = []
    for name in names:
        frame = _read_table(tables, name)
        if frame.empty:
            continue
        groups = frame.groupby(["schedule", "op"])
        for (schedule, op), group in groups:
            ok = group[group.status == "ok"]
            records.append({"device": name, "schedule": schedule, "op": op, "rows": len(group),
                            "ok": len(ok), "failed": int((group.status != "ok").sum()),
                            "configs": int(ok.config_id.nunique()),
                            "median_ms": float(ok.latency_ms.median()) if len(ok) else None,
                            "last": str(group.measured_at.max())})
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print(f"no measurements under {tables}")
        return
    table = Table("device", "schedule", "op", "rows", "ok", "failed", "configs", "median ms", "last measured")
    for r in records:
        table.add_row(r["device"], r["schedule"], r["op"], str(r["rows"]), str(r["ok"]), str(r["failed"]),
                      str(r["configs"]), f"{r['median_ms']:.4f}" if r["median_ms"] is not None else "-", r["last"])
    out.print(table)


@tables_app.command("export")
def tables_export(device: str, csv: Annotated[Path, typer.Option("--csv", help="CSV file to write ('-' for stdout).")],
                  tables: TablesOpt = Path("tables")) -> None:
    """Export a device's table as CSV."""
    frame = _read_table(tables, device)
    if str(csv) == "-":
        frame.to_csv(sys.stdout, index=False)
    else:
        frame.to_csv(csv, index=False)
        err.print(f"{len(frame)} rows → {csv}")


@tables_app.command("compact")
def tables_compact(device: str, tables: TablesOpt = Path("tables")) -> None:
    """Merge a device's part files into one, keeping every row."""
    _read_table(tables, device)
    merged = tables_mod.compact(tables, device)
    err.print(f"merged into {merged}" if merged else "nothing to merge")


@app.command("models")
def models_list(as_json: JsonOpt = False) -> None:
    """List the built-in models that --model accepts."""
    from .models import BUILTIN_MODELS

    records = [{"name": name, "input_shape": list(m.input_shape), "description": m.description}
               for name, m in BUILTIN_MODELS.items()]
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = Table("name", "input shape", "description")
    for r in records:
        table.add_row(r["name"], "x".join(map(str, r["input_shape"])), r["description"])
    out.print(table)


def main() -> None:
    app()
