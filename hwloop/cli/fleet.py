"""``hwloop collect`` on boards: several devices at once, one progress bar per board."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import TextColumn

from .app import err, out, progress_bar, read_table
from .collect import measured_text, summary_record


def collect_on_boards(devices, configs, policy, tables: Path, cache: Path, force: bool, as_json: bool) -> None:
    """Measure ``configs`` on ``devices`` in parallel; exit 1 if a row failed or a board was given up."""
    from ..fleet import collect_fleet

    for device in devices:
        read_table(tables, device.name)
    progress = progress_bar(TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[status]}"))
    with progress:
        tasks = {d.name: progress.add_task(f"{d.name} · {policy.name}", total=None, failed=0, status="")
                 for d in devices}

        def on_start(name: str, total: int) -> None:
            progress.update(tasks[name], total=total, status="" if total else "nothing to measure")

        def on_row(name: str, row: dict) -> None:
            task = tasks[name]
            progress.advance(task)
            progress.update(task, failed=progress.tasks[task].fields["failed"] + (row["status"] != "ok"))

        def on_lost(name: str, error: str) -> None:
            progress.update(tasks[name], status="[red]given up")

        try:
            runs = collect_fleet(devices, configs, policy, tables, cache, force, on_start, on_row, on_lost)
        except KeyboardInterrupt:
            err.print(f"interrupted: every measurement written so far is kept under {tables}; "
                      "run the same command again to measure the rest")
            raise typer.Exit(130) from None
    records = [{**summary_record(r.summary, tables), "error": r.error} for r in runs]
    if as_json:
        out.print_json(json.dumps(records))
    else:
        for r in records:
            state = f"[red]given up: {escape(r['error'])}[/]" if r["error"] else "done"
            out.print(f"{r['device']}: {measured_text(r)} in {r['wall_s']:.1f} s → {r['table']} · {state}",
                      highlight=False, emoji=False)
            for failure in r["failures"][:5]:
                out.print(f"  [red]failed[/] {failure['config_id']} at {failure['stage']}: {escape(failure['error'])}",
                          highlight=False, emoji=False)
    if any(r["error"] or r["failed"] for r in records):
        raise typer.Exit(1)
