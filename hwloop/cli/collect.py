"""``hwloop collect``: build, check and time a space of layer configurations on a device."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from ..schedules import POLICY_HELP
from .app import (
    CacheOpt,
    JsonOpt,
    PredictorsOpt,
    RegistryOpt,
    TablesOpt,
    app,
    err,
    fail,
    note_crowded,
    out,
    parse_shape,
    progress_bar,
    read_table,
)


def _configs(model: str | None, space: Path | None, input_shape: str | None, samples: int, seed: int):
    """The configs of ``--space`` (read without torch) or of ``--model``'s space."""
    from ..space import SpaceError, load_space

    if (model is None) == (space is None):
        fail("give exactly one of --model and --space")
    if space is not None:
        try:
            return load_space(space)
        except SpaceError as exc:
            fail(str(exc))
    from ..models import ModelError, load_model
    from ..tracing import model_space

    try:
        if Path(model).is_dir():
            from ..prune.export import load
            from ..prune.groups import PruneError

            try:
                module, _, record = load(Path(model))
            except PruneError as exc:
                fail(str(exc))
            return model_space(module, tuple(record["input_shape"]), samples, seed)
        module, shape = load_model(model, parse_shape(input_shape))
        return model_space(module, shape, samples, seed)
    except (ModelError, SpaceError) as exc:
        fail(str(exc))


@app.command()
def collect(
    device: Annotated[
        list[str],
        typer.Option(
            "--device",
            "-d",
            help="Registered device or group name (see `hwloop devices list`); repeat it to measure "
            "on several boards at once.",
        ),
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="Built-in model (resnet20, resnet56, resnet18, mobilenetv2), path/to/file.py:callable, "
            "or the output folder of `hwloop prune`; its conv/linear layers give the space of "
            "channel counts a pruner could choose (a pruned model's: its layers and narrower).",
        ),
    ] = None,
    space: Annotated[
        Optional[Path], typer.Option("--space", "-s", help="YAML space file with a `layers:` list.")
    ] = None,
    input_shape: Annotated[
        Optional[str], typer.Option(help="Model input shape, e.g. 1,3,32,32 (required for a file).")
    ] = None,
    samples: Annotated[
        int, typer.Option(help="Configs to sample from a model's space (each layer's dense config always).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    schedule: Annotated[str, typer.Option(help=f"Schedule policy: {POLICY_HELP}.")] = "default",
    tables: TablesOpt = Path("tables"),
    registry: RegistryOpt = None,
    cache: CacheOpt = None,
    force: Annotated[bool, typer.Option(help="Measure again configs already in the table.")] = False,
    adaptive: Annotated[
        bool,
        typer.Option(
            help="Spend --budget measurements where a predictor fitted on what is measured so far is uncertain or "
            "wrong: a first design, then rounds of fit-and-choose; the space (a model's sampled at 10x the "
            "budget) is the pool."
        ),
    ] = False,
    budget: Annotated[Optional[int], typer.Option(min=1, help="Measurements --adaptive may spend.")] = None,
    sources: Annotated[
        Optional[list[str]],
        typer.Option(
            "--from",
            help="With --adaptive on a new device: a device already measured whose saved predictor (under "
            "--predictors) says where few measurements teach the most (both ends of each layer's range, "
            "steps of the new device's vector width, where sources disagree); `hwloop fit --from` then "
            "fits the few-shot predictor. Repeatable.",
            show_default=False,
        ),
    ] = None,
    predictors: PredictorsOpt = Path("predictors"),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what the space holds and what would be measured on each device, then stop: "
            "nothing is built, no device is reached.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Build, check and time a space of layer configurations on a device; every result is kept.

    Each config is timed in independent trials that must agree; trials during which another
    process used the timing CPU are taken again, and what stayed too busy, or whose trials still
    disagreed by more than 10 %, is measured once more at the end.
    Resumable: a re-run measures only what is missing. `--dry-run` prints the plan. Examples:

      hwloop collect --device local --model resnet20 --samples 60

      hwloop collect --device local --space docs/space.yaml --schedule tuned:64

      hwloop collect --device local --model resnet20 --adaptive --budget 300

      hwloop collect --device pi5 --model resnet20 --adaptive --budget 20 --from pi4   (a new board)

      hwloop collect --device local --model pruned/resnet20-latency-0.5 --samples 40   (where a plan went)

      hwloop collect --device pi4 --device pi5 --model resnet20   (or a group: --device raspberry-pi)
    """
    from .. import tables as tables_mod
    from ..collect import collect as run_collect
    from ..registry import RegistryError
    from ..schedules import PolicyError, parse_policy
    from ..transports import TransportError
    from .app import load_registry

    try:
        devices = load_registry(registry).select(device)
    except RegistryError as exc:
        fail(str(exc))
    try:
        policy = parse_policy(schedule)
    except PolicyError as exc:
        fail(str(exc))
    note_crowded(devices)
    if adaptive and budget is None:
        fail("--adaptive needs --budget N, the number of measurements it may spend")
    if sources and not adaptive:
        fail("--from chooses what --adaptive measures: give --adaptive --budget N")
    configs = _configs(model, space, input_shape, max(samples, 10 * budget) if adaptive else samples, seed)
    if len(devices) > 1 and adaptive:
        fail("--adaptive measures one device at a time: give one --device")
    if dry_run:
        _print_plan(devices, configs, policy, tables, force, as_json)
        return
    if not adaptive and (len(devices) > 1 or devices[0].transport != "local"):
        _collect_on_boards(devices, configs, policy, tables, cache or default_cache_dir(), force, as_json)
        return
    dev = devices[0]
    read_table(tables, dev.name)
    known = [_source(name, dev.name, policy, predictors) for name in dict.fromkeys(sources or [])]
    progress = progress_bar(TextColumn("{task.fields[rate]} cfg/min"), TextColumn("[red]{task.fields[failed]} failed"))
    state = {"failed": 0}
    with progress:
        task = progress.add_task(f"{dev.name} · {policy.name}", total=None, rate="-", failed=0)

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_row(row: dict) -> None:
            state["failed"] += row["status"] != "ok"
            progress.advance(task)
            elapsed = progress.tasks[task].elapsed or 1e-9
            progress.update(task, failed=state["failed"], rate=f"{progress.tasks[task].completed * 60 / elapsed:.1f}")

        try:
            if adaptive:
                from ..predictor.sampling import adaptive_collect

                on_start(budget)
                summary = adaptive_collect(
                    dev,
                    configs,
                    policy,
                    tables,
                    cache or default_cache_dir(),
                    budget,
                    seed=seed,
                    force=force,
                    on_row=on_row,
                    on_wait=say_waiting,
                    sources=known,
                )
            else:
                summary = run_collect(
                    dev,
                    configs,
                    policy,
                    tables,
                    cache or default_cache_dir(),
                    force,
                    on_start,
                    on_row,
                    on_wait=say_waiting,
                )
        except (TransportError, tables_mod.TableError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err.print(
                f"interrupted: every measurement written so far is kept in {tables_mod.device_dir(tables, dev.name)}; "
                "run the same command again to measure the rest"
            )
            raise typer.Exit(130) from None
    _print_summary(summary, tables, as_json)
    if summary.error:
        err.print(
            f"[red]{escape(dev.name)} given up:[/] {escape(summary.error)}; run the same command again to "
            "measure the rest",
            highlight=False,
            emoji=False,
        )
    if summary.failed or summary.error:
        raise typer.Exit(1)


def _source(name: str, device: str, policy, predictors: Path):
    """The latency model of ``name``'s saved predictor, a source for ``device`` under ``policy``."""
    from ..predictor import Predictor, PredictorError

    if name == device:
        fail(f"--from {name}: a device cannot be its own source")
    try:
        return Predictor.load(name, predictors, policy.name).model
    except PredictorError as exc:
        fail(str(exc))


def _print_plan(devices, configs, policy, tables: Path, force: bool, as_json: bool) -> None:
    """What a collection of ``configs`` would measure on each of ``devices`` (``--dry-run``)."""
    from collections import Counter

    from ..collect import pending
    from ..rows import Context

    ops = Counter(c.op for c in dict.fromkeys(configs))
    records = []
    for device in devices:
        read_table(tables, device.name, ["config_id"])
        todo = pending(configs, Context.of(device, policy), tables, force)
        records.append(
            {
                "device": device.name,
                "schedule": policy.name,
                "configs": len(set(configs)),
                "passes": device.protocol.passes,
                "to_measure": len(todo),
                "ops": dict(ops),
                "to_measure_ops": dict(Counter(c.op for c in todo)),
            }
        )
    if as_json:
        out.print_json(json.dumps(records))
        return
    for r in records:
        per_op = ", ".join(f"{op} {count}" for op, count in sorted(r["ops"].items()))
        out.print(
            f"{r['device']} · {r['schedule']}: the space holds {r['configs']} configs ({per_op}); "
            f"{r['passes']} pass(es) → {r['to_measure']} measurements to take",
            highlight=False,
        )


def say_waiting(message: str) -> None:
    """Tell the user that the run waits for another one (on stderr)."""
    err.print(escape(message), highlight=False, emoji=False)


def summary_record(summary, tables: Path) -> dict:
    """What a collection on one device did, as printed with --json."""
    from .. import tables as tables_mod

    readings = [row["sentinel_ms"] for row in summary.rows if row.get("sentinel_ms")]
    return {
        "device": summary.device,
        "schedule": summary.schedule,
        "planned": summary.planned,
        "skipped": summary.skipped,
        "measured": summary.measured,
        "failed": summary.failed,
        "retaken": summary.retaken,
        "disturbed": sum(row["disturbed"] or 0 for row in summary.rows),
        "sentinel_ms": [min(readings), max(readings)] if readings else None,
        "wall_s": round(summary.wall_s, 2),
        "error": summary.error,
        "configs_per_min": round(len(summary.rows) * 60 / summary.wall_s, 2) if summary.rows else 0.0,
        "table": str(tables_mod.device_dir(tables, summary.device)),
        "failures": [
            {"config_id": r["config_id"], "stage": r["stage"], "error": r["error"]}
            for r in summary.rows
            if r["status"] != "ok"
        ],
    }


def measured_text(record: dict) -> str:
    """``planned …, already measured …, measured now …`` of a :func:`summary_record`, and the
    trials dropped as disturbed (with how much slower the sentinel ran at worst than at best)."""
    retaken = (
        f" ({record['retaken']} taken again: a busy or slow device, or scattered trials)" if record["retaken"] else ""
    )
    text = (
        f"planned {record['planned']}, already measured {record['skipped']}, measured now "
        f"{record['measured']}{retaken}, failed {record['failed']}"
    )
    if record["disturbed"]:
        text += f"; {record['disturbed']} trial{'s' if record['disturbed'] > 1 else ''} dropped as disturbed"
        if record["sentinel_ms"]:
            fastest, slowest = record["sentinel_ms"]
            text += f" (the sentinel ran up to {slowest / fastest:.2f}× its fastest around the trials kept)"
    return text


def _print_summary(summary, tables: Path, as_json: bool) -> None:
    ok = [row for row in summary.rows if row["status"] == "ok"]
    record = summary_record(summary, tables)
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table("op", "measured", "min ms", "median ms", "max ms", title=f"{summary.device} · {summary.schedule}")
    for op in sorted({row["op"] for row in ok}):
        latencies = [row["latency_ms"] for row in ok if row["op"] == op]
        table.add_row(
            op,
            str(len(latencies)),
            f"{min(latencies):.4f}",
            f"{statistics.median(latencies):.4f}",
            f"{max(latencies):.4f}",
        )
    if ok:
        out.print(table)
    out.print(
        f"{measured_text(record)} in {record['wall_s']:.1f} s ({record['configs_per_min']} configs/min) "
        f"→ {record['table']}"
    )
    for failure in record["failures"][:10]:
        out.print(
            f"[red]failed[/] {failure['config_id']} at {failure['stage']}: {escape(failure['error'])}",
            highlight=False,
            emoji=False,
        )


BAR_PER_BOARD = 8  # more boards than this share one progress bar


def _collect_on_boards(devices, configs, policy, tables: Path, cache: Path, force: bool, as_json: bool) -> None:
    """Measure ``configs`` on ``devices`` in parallel; exit 1 if a row failed or a board was given up.
    Up to :data:`BAR_PER_BOARD` boards get a progress bar each, more share one that counts them."""
    from .. import tables as tables_mod
    from ..fleet import collect_fleet

    for device in devices:
        read_table(tables, device.name, ["config_id"])
    progress = progress_bar(TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[status]}"))
    shared = len(devices) > BAR_PER_BOARD
    lost: set[str] = set()
    with progress:
        if shared:
            one = progress.add_task(f"{len(devices)} boards · {policy.name}", total=0, failed=0, status="")
            tasks = dict.fromkeys((d.name for d in devices), one)
        else:
            tasks = {
                d.name: progress.add_task(f"{d.name} · {policy.name}", total=None, failed=0, status="") for d in devices
            }

        totals: dict[str, int] = {}

        def on_start(name: str, total: int) -> None:
            task = tasks[name]
            totals[name] = total
            if shared:
                progress.update(task, total=sum(totals.values()))
            else:
                progress.update(task, total=total, status="" if total else "nothing to measure")

        def on_row(name: str, row: dict) -> None:
            task = tasks[name]
            progress.advance(task)
            progress.update(task, failed=progress.tasks[task].fields["failed"] + (row["status"] != "ok"))

        def on_lost(name: str, error: str) -> None:
            lost.add(name)
            progress.update(tasks[name], status=f"[red]{len(lost)} given up" if shared else "[red]given up")

        try:
            runs = collect_fleet(
                devices, configs, policy, tables, cache, force, on_start, on_row, on_lost, on_wait=say_waiting
            )
        except tables_mod.TableError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err.print(
                f"interrupted: every measurement written so far is kept under {tables}; "
                "run the same command again to measure the rest"
            )
            raise typer.Exit(130) from None
    records = [summary_record(r.summary, tables) for r in runs]
    if as_json:
        out.print_json(json.dumps(records))
    else:
        if shared:
            out.print(
                f"{len(records)} boards: measured now {sum(r['measured'] for r in records)}, failed "
                f"{sum(r['failed'] for r in records)}, {len(lost)} given up → {tables}",
                highlight=False,
            )
        for r in records:
            if shared and not (r["error"] or r["failed"]):
                continue
            state = f"[red]given up: {escape(r['error'])}[/]" if r["error"] else "done"
            out.print(
                f"{r['device']}: {measured_text(r)} in {r['wall_s']:.1f} s → {r['table']} · {state}",
                highlight=False,
                emoji=False,
            )
            for failure in r["failures"][:5]:
                out.print(
                    f"  [red]failed[/] {failure['config_id']} at {failure['stage']}: {escape(failure['error'])}",
                    highlight=False,
                    emoji=False,
                )
    if any(r["error"] or r["failed"] for r in records):
        raise typer.Exit(1)
