"""The ``hwloop`` command line: one module per command group, all on :data:`app`."""

import os

from . import collect, devices, measure, models, predictor, prune, tables  # noqa: F401 - registers the commands
from .app import app, reflow_help

reflow_help(app)

__all__ = ["app", "main"]


def main() -> None:
    # Arrow's default allocator, mimalloc, takes transparent huge pages where the kernel allows
    # them, and a short command such as `tables show` could spend half its time zeroing 2 MiB
    # pages it barely touched, by how much memory happened to be free. Set the variable to
    # choose another allocator.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    app()
