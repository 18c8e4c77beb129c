"""The ``hwloop`` Typer application and what its commands share: consoles, options, errors, lookups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    help="Hardware-in-the-loop, latency-aware channel pruning: measure layers on your boards, "
    "learn their latency, prune for it.",
)

out = Console()
err = Console(stderr=True)

RegistryOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--registry",
        help="Folder of device YAML files (default: $HWLOOP_REGISTRY, else ./devices).",
        show_default=False,
    ),
]
TablesOpt = Annotated[Path, typer.Option("--tables", help="Folder of measurement tables, one sub-folder per device.")]
CacheOpt = Annotated[
    Optional[Path],
    typer.Option("--cache", help="Build cache (default: $HWLOOP_CACHE, else ~/.cache/hwloop).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PredictorsOpt = Annotated[
    Path, typer.Option("--predictors", help="Folder of trained predictors (`hwloop fit`), one sub-folder per device.")
]


def reflow_help(typer_app: typer.Typer) -> None:
    """Give every command its docstring with each paragraph's wrapped lines joined, as rich help keeps
    line breaks; indented lines (examples) stay on lines of their own."""
    import inspect

    for command in typer_app.registered_commands:
        if command.help is None and command.callback.__doc__:
            command.help = "\n\n".join(_joined(p) for p in inspect.getdoc(command.callback).split("\n\n"))
    for group in typer_app.registered_groups:
        reflow_help(group.typer_instance)


def _joined(paragraph: str) -> str:
    lines = paragraph.split("\n")
    return paragraph if any(line.startswith(" ") for line in lines) else " ".join(lines)


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as an error and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, emoji=False)
    raise typer.Exit(code)


def load_registry(directory: Path | None):
    from ..registry import RegistryError
    from ..registry import load_registry as load

    try:
        return load(directory)
    except RegistryError as exc:
        fail(str(exc))


def get_device(name: str, directory: Path | None):
    from ..registry import RegistryError

    registry = load_registry(directory)
    try:
        return registry.get(name)
    except RegistryError as exc:
        fail(str(exc))


def note_crowded(devices) -> None:
    """Say which local devices time several threads on every CPU of this machine: on a 2-core host
    such figures did not repeat from one collection to the next (docs/measurement.md)."""
    from ..transports.local import takes_every_cpu

    for dev in devices:
        if dev.transport == "local" and takes_every_cpu(dev.protocol):
            err.print(
                f"[yellow]note:[/] {dev.name} times {dev.protocol.threads} threads on every CPU this machine "
                "gives hwloop, which hwloop and the system share: its figures may not repeat from one collection "
                "to the next (docs/measurement.md); leave a CPU free, or collect some configs twice to see",
                highlight=False,
            )


def progress_bar(*columns, disable: bool = False):
    """A rich progress bar on stderr: description, bar, count, ``columns``, elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=disable,
    )


def read_table(tables: Path, device: str, columns: list[str] | None = None, where: dict | None = None):
    """``device``'s layer table (only ``columns``, only rows matching ``where``), or exit naming the bad file."""
    from .. import tables as tables_mod

    try:
        return tables_mod.read(tables, device, columns, where)
    except tables_mod.TableError as exc:
        fail(str(exc))


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape`` such as ``1,3,32,32`` (or ``1x3x32x32``) as a tuple; None when not given."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        fail(f"--input-shape {text!r}: expected comma-separated integers such as 1,3,32,32")
    if not shape or min(shape) < 1:
        fail(f"--input-shape {text!r}: dimensions must be positive")
    return shape
