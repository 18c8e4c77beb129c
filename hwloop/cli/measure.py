"""``hwloop measure``: whole models compiled and timed end to end on a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from ..schedules import POLICY_HELP
from .app import (
    CacheOpt,
    JsonOpt,
    RegistryOpt,
    TablesOpt,
    app,
    err,
    fail,
    get_device,
    note_crowded,
    out,
    parse_shape,
)


@app.command()
def measure(
    device: Annotated[str, typer.Option("--device", "-d", help="Registered device name (see `hwloop devices list`).")],
    models: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Built-in model (see `hwloop models`) or path/to/file.py:callable; repeat for several.",
        ),
    ],
    input_shape: Annotated[
        Optional[str], typer.Option(help="Input shape, e.g. 1,3,32,32 (required for a file).")
    ] = None,
    schedule: Annotated[str, typer.Option(help=f"Schedule policy: {POLICY_HELP}.")] = "default",
    tables: TablesOpt = Path("tables"),
    registry: RegistryOpt = None,
    cache: CacheOpt = None,
    thinned: Annotated[
        Optional[str],
        typer.Option(
            help="Also time copies of each model with every channel group cut to these shares of its channels, "
            "e.g. 0.75,0.5,0.25 (named MODEL@thinned:SHARE): whole models across the range pruned ones fall in, "
            "for the calibration `hwloop fit` draws from the model table.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Measure again models already in the model table.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compile whole models, check them against torch on the device and time them end to end.

    Rows go to the device's model table (tables/DEVICE/_models). The policy schedules every conv
    and dense of the model by the rules that produced the layer tables, so the model's latency and
    the sum of its layers speak of the same code. Example:

      hwloop measure --device local --model resnet20 --model mobilenetv2

      hwloop measure --device local --model resnet20 --input-shape 1,1,28,28 --thinned 0.75,0.5,0.25
    """
    from ..endtoend import ModelCase, measure_models
    from ..models import ModelError, load_model
    from ..prune.groups import PruneError, thinned_cases
    from ..schedules import PolicyError, parse_policy
    from ..space import SpaceError
    from ..transports import TransportError

    dev = get_device(device, registry)
    note_crowded([dev])
    try:
        policy = parse_policy(schedule)
        if policy.kind == "transfer":
            raise PolicyError("transfer:N schedules single layers; measure models with default, untuned or tuned:N")
        cases = [ModelCase(spec, *load_model(spec, parse_shape(input_shape))) for spec in models]
        cases += [thin for case in cases for thin in thinned_cases(case, parse_shares(thinned))]
    except (PolicyError, ModelError, PruneError) as exc:
        fail(str(exc))

    def on_row(row: dict) -> None:
        err.print(
            f"{row['model']}: {row['status']}" + (f" {row['latency_ms']:.3f} ms" if row["status"] == "ok" else "")
        )

    try:
        with err.status(f"{dev.name} · {policy.name}: lowering, scheduling, building and timing"):
            rows = measure_models(dev, cases, policy, tables, cache or default_cache_dir(), force, on_row)
    except (TransportError, SpaceError) as exc:
        fail(str(exc))
    records = [
        {
            "model": r["model"],
            "status": r["status"],
            "latency_ms": r["latency_ms"],
            "cv": r["latency_cv"],
            "build_s": round(r["build_s"], 2),
            "check_error": r["check_error"],
            "stage": r["stage"],
            "error": r["error"],
        }
        for r in rows
    ]
    if as_json:
        out.print_json(json.dumps(records))
    else:
        table = Table("model", "status", "latency ms", "cv", "build s", title=f"{dev.name} · {policy.name}")
        for r in records:
            ok = r["status"] == "ok"
            table.add_row(
                r["model"],
                r["status"] if ok else f"[red]{r['status']}[/] at {r['stage']}",
                f"{r['latency_ms']:.3f}" if ok else escape(r["error"] or ""),
                f"{r['cv']:.3f}" if ok else "",
                f"{r['build_s']:.1f}",
            )
        out.print(table)
        skipped = len({case.name for case in cases} - {r["model"] for r in rows})
        if skipped:
            out.print(f"{skipped} model(s) already measured with this policy and protocol (--force measures again)")
    if any(r["status"] != "ok" for r in records):
        raise typer.Exit(1)


def parse_shares(text: str | None) -> list[float]:
    """``--thinned`` such as ``0.75,0.5,0.25`` as floats in (0, 1); none when not given."""
    if text is None:
        return []
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        fail(f"--thinned {text!r}: expected comma-separated shares such as 0.75,0.5,0.25")
    if not all(0 < share < 1 for share in shares):
        fail(f"--thinned {text!r}: each share must lie strictly between 0 and 1")
    return shares
