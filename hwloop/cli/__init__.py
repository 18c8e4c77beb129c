"""The ``hwloop`` command line: one module per command group, all on :data:`app`."""

from . import collect, devices, measure, models, predictor, prune, tables  # noqa: F401 - registers the commands
from .app import app, reflow_help

reflow_help(app)

__all__ = ["app", "main"]


def main() -> None:
    app()
