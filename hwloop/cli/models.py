"""``hwloop models``: the built-in models."""

from __future__ import annotations

import json

from rich.table import Table

from .app import JsonOpt, app, out


@app.command("models")
def models_list(as_json: JsonOpt = False) -> None:
    """List the built-in models that --model accepts."""
    from ..models import BUILTIN_MODELS

    records = [{"name": name, "input_shape": list(m.input_shape), "description": m.description}
               for name, m in BUILTIN_MODELS.items()]
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = Table("name", "input shape", "description")
    for r in records:
        table.add_row(r["name"], "x".join(map(str, r["input_shape"])), r["description"])
    out.print(table)
