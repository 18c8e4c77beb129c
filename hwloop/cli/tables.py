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
    ±5 % and ±10 %, and the share timed while nothing else used the timing CPU (quiet). A table
    whose trials agree within ±10 % for fewer than 95 % of its measurements is flagged: the device
    was too noisy to learn from."""
    import numpy as np
    import pyarrow.compute as pc

    from .. import tables as tables_mod
    from ..trust import COLUMNS, agreement_of, warning

    names = [device] if device else tables_mod.devices(tables)
    records = []
    for name in names:
        try:
            table = tables_mod.read_arrow(
                tables, name, list(dict.fromkeys(["schedule", "op", "config_id", "measured_at", *COLUMNS]))
            )
        except tables_mod.TableError as exc:
            fail(str(exc))
        column = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ["schedule", "op", "status"]}
        latency = table.column("latency_ms").to_numpy(zero_copy_only=False).astype(float)
        trials = table.column("trial_latencies_ms")
        counts = pc.fill_null(pc.list_value_length(trials), 0).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(trials).to_numpy(zero_copy_only=False)
        quiet = pc.fill_null(table.column("quiet"), True).to_numpy(zero_copy_only=False)
        disturbed = pc.fill_null(table.column("disturbed"), 0).to_numpy(zero_copy_only=False)
        for schedule, op in sorted({k for k in zip(column["schedule"], column["op"]) if None not in k}):
            where = (column["schedule"] == schedule) & (column["op"] == op)
            ok = where & (column["status"] == "ok")
            latencies = latency[ok]
            latencies = latencies[~np.isnan(latencies)]
            last = pc.max(table.column("measured_at").filter(where)).as_py()
            trust = agreement_of(
                ok[where],
                latency[where],
                counts[where],
                values[np.repeat(where, counts)],
                quiet[where],
                disturbed[where],
            )
            records.append(
                {
                    "device": name,
                    "schedule": schedule,
                    "op": op,
                    "rows": int(where.sum()),
                    "ok": int(ok.sum()),
                    "failed": int((where & (column["status"] != "ok")).sum()),
                    "configs": pc.count_distinct(table.column("config_id").filter(ok)).as_py(),
                    "median_ms": float(np.median(latencies)) if len(latencies) else None,
                    "last": str(last) if last is not None else "-",
                    "trials": trust,
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
