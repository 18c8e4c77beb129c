"""``hwloop tables``: show, export and compact measurement tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import tables as tables_mod
from .app import JsonOpt, TablesOpt, app, err, out, read_table

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
    from ..trust import COLUMNS, agreement, warning

    names = [device] if device else tables_mod.devices(tables)
    records = []
    for name in names:
        frame = read_table(tables, name, list(dict.fromkeys(["schedule", "op", "config_id", "measured_at", *COLUMNS])))
        for (schedule, op), group in frame.groupby(["schedule", "op"]):
            ok = group[group.status == "ok"]
            records.append(
                {
                    "device": name,
                    "schedule": schedule,
                    "op": op,
                    "rows": len(group),
                    "ok": len(ok),
                    "failed": int((group.status != "ok").sum()),
                    "configs": int(ok.config_id.nunique()),
                    "median_ms": float(ok.latency_ms.median()) if len(ok) else None,
                    "last": str(group.measured_at.max()),
                    "trials": agreement(group),
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
    read_table(tables, device, ["config_id"])
    merged = tables_mod.compact(tables, device, on_wait=lambda message: err.print(message))
    err.print(f"merged into {merged}" if merged else "nothing to merge")
