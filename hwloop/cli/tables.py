"""``hwloop tables``: show, export and compact measurement tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import JsonOpt, TablesOpt, app, err, fail, out, read_table

tables_app = typer.Typer(no_args_is_help=True, help="Measurement tables: show, export, compact.")
app.add_typer(tables_app, name="tables")


@tables_app.command("show")
def show(
    device: Annotated[Optional[str], typer.Argument(help="Device; all devices when omitted.")] = None,
    tables: TablesOpt = Path("tables"),
    as_json: JsonOpt = False,
) -> None:
    """Summarise the tables per device, schedule policy and op, and how far they can be trusted.

    Rows, failures, latencies; the share of measurements whose independent trials agree within
    ±5 % and ±10 % (a measurement taken again counts by its retake where that agreed), the share
    timed while nothing else used the timing CPU (quiet), and how far the host's speed moved while
    the table was measured (the sentinel's slowest state over its fastest).
    A table whose trials agree within ±10 % for fewer than 95 % of its measurements (and more than
    one) is flagged: the device was too noisy to learn from."""
    from datetime import datetime, timedelta, timezone

    import numpy as np
    import pyarrow.compute as pc

    from .. import tables as tables_mod
    from ..trust import COLUMNS, agreement_of, spreads, superseded, warning

    names = [device] if device else tables_mod.devices(tables)
    records = []
    for name in names:
        try:
            table = tables_mod.read_arrow(
                tables,
                name,
                list(dict.fromkeys(["schedule", "op", "config_id", "measured_at", "sentinel_ms", *COLUMNS])),
            )
        except tables_mod.TableError as exc:
            fail(str(exc))
        (schedule, schedules), (op, ops), (status, statuses), (config, _) = (
            tables_mod.codes(table.column(c)) for c in ("schedule", "op", "status", "config_id")
        )
        succeeded = status == (statuses.index("ok") if "ok" in statuses else -2)
        latency = tables_mod.values(table.column("latency_ms"), np.nan)
        trials = table.column("trial_latencies_ms")
        counts = tables_mod.values(pc.list_value_length(trials), 0)
        values = tables_mod.values(pc.list_flatten(trials), np.nan)
        quiet = tables_mod.values(table.column("quiet"), True)
        disturbed = tables_mod.values(table.column("disturbed"), 0)
        measured_at = tables_mod.values(table.column("measured_at"), np.iinfo(np.int64).min)
        sentinel = tables_mod.values(table.column("sentinel_ms"), np.nan)
        schedule_config = schedule * (config.max(initial=0) + 1) + config
        stands = ~superseded(spreads(succeeded, latency, counts, values), schedule_config)
        groups = {(schedules[s], ops[o]): (s, o) for s, o in set(zip(schedule, op)) if s >= 0 and o >= 0}
        for key in sorted(groups):
            where = (schedule == groups[key][0]) & (op == groups[key][1])
            ok = where & succeeded
            latencies = latency[ok]
            latencies = latencies[~np.isnan(latencies)]
            last = measured_at[where].max()
            states = sentinel[ok & ~np.isnan(sentinel)]
            counted = where & stands
            trust = agreement_of(
                ok[counted],
                latency[counted],
                counts[counted],
                values[np.repeat(counted, counts)],
                quiet[counted],
                disturbed[counted],
            )
            records.append(
                {
                    "device": name,
                    "schedule": key[0],
                    "op": key[1],
                    "rows": int(where.sum()),
                    "ok": int(ok.sum()),
                    "failed": int((where & ~succeeded).sum()),
                    "configs": len(np.unique(config[ok & (config >= 0)])),
                    "median_ms": float(np.median(latencies)) if len(latencies) else None,
                    "last": "-"
                    if last == np.iinfo(np.int64).min
                    else str(datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(last))),
                    "trials": trust,
                    "sentinel_ms": [float(states.min()), float(states.max())] if len(states) else None,
                }
            )
    if as_json:
        out.print_json(json.dumps(records))
        return
    if not records:
        out.print(f"no measurements under {tables}")
        return
    table = Table(
        "device",
        "schedule",
        "op",
        "rows",
        "ok",
        "failed",
        "configs",
        "median ms",
        "trials ±5 %",
        "±10 %",
        "quiet",
        "sentinel",
        "last measured",
    )
    for r in records:
        trials = r["trials"]
        shares = [f"{trials[k]:.1%}" for k in ("within_5", "within_10", "quiet")] if trials["measured"] else ["-"] * 3
        table.add_row(
            r["device"],
            r["schedule"],
            r["op"],
            str(r["rows"]),
            str(r["ok"]),
            str(r["failed"]),
            str(r["configs"]),
            f"{r['median_ms']:.4f}" if r["median_ms"] is not None else "-",
            *shares,
            f"{r['sentinel_ms'][1] / r['sentinel_ms'][0]:.2f}×" if r["sentinel_ms"] else "-",
            r["last"],
        )
    out.print(table)
    for r in records:
        if why := warning(r["trials"]):
            err.print(
                f"[yellow]{escape(r['device'])} · {escape(r['schedule'])} · {r['op']}:[/] {escape(why)}",
                highlight=False,
                emoji=False,
            )


@tables_app.command("export")
def export(
    device: str,
    csv: Annotated[Path, typer.Option("--csv", help="CSV file to write ('-' for stdout).")],
    tables: TablesOpt = Path("tables"),
) -> None:
    """Export a device's table as CSV."""
    frame = read_table(tables, device)
    if str(csv) == "-":
        frame.to_csv(sys.stdout, index=False)
    else:
        frame.to_csv(csv, index=False)
        err.print(f"{len(frame)} rows → {csv}")


@tables_app.command("compact")
def compact(device: str, tables: TablesOpt = Path("tables")) -> None:
    """Merge all of a device's part files into one, keeping every row.

    Every run merges small parts on its own when it ends; this merges them all."""
    from .. import tables as tables_mod

    read_table(tables, device, ["config_id"])
    merged = tables_mod.compact(tables, device, on_wait=lambda message: err.print(message))
    err.print(f"merged into {merged}" if merged else "nothing to merge")
