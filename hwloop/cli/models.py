"""``hwloop models`` (the models --model accepts) and ``hwloop profile`` (where a model spends its time)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from ..schedules import POLICY_HELP
from .app import CacheOpt, JsonOpt, RegistryOpt, app, err, fail, get_device, out, parse_shape


@app.command("models")
def models_list(as_json: JsonOpt = False) -> None:
    r"""List the models that --model accepts: the built-in ones and torchvision's classifiers.

    torchvision:NAME builds a torchvision classifier with random weights (torchvision comes with
    pip install 'hwloop\[vision]')."""
    from ..models import BUILTIN_MODELS, TORCHVISION, TORCHVISION_INPUT, ModelError, torchvision_classifiers

    records = [
        {"name": name, "input_shape": list(m.input_shape), "description": m.description}
        for name, m in BUILTIN_MODELS.items()
    ]
    try:
        records += [
            {
                "name": TORCHVISION + name,
                "input_shape": list(TORCHVISION_INPUT),
                "description": "torchvision classifier, random weights, 3-channel input of any size it takes",
            }
            for name in torchvision_classifiers()
        ]
        missing = None
    except ModelError as exc:
        missing = str(exc)
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = Table("name", "input shape", "description")
    for r in records:
        table.add_row(r["name"], "x".join(map(str, r["input_shape"])), r["description"])
    out.print(table)
    if missing:
        err.print(f"torchvision:NAME: {missing}")


@app.command("profile")
def profile_model(
    device: Annotated[
        str,
        typer.Option("--device", "-d", help="A device this machine runs (transport: local): its target and threads."),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in model, torchvision:NAME or path/to/file.py:callable.")
    ],
    input_shape: Annotated[
        Optional[str], typer.Option(help="Model input shape, e.g. 1,3,64,64 (required for a file).", show_default=False)
    ] = None,
    schedule: Annotated[str, typer.Option(help=f"Schedule policy: {POLICY_HELP}.")] = "default",
    runs: Annotated[int, typer.Option(min=1, help="Profiled runs (after one warm-up).")] = 20,
    top: Annotated[int, typer.Option(min=0, help="Slowest VM calls to list besides the kinds.")] = 10,
    registry: RegistryOpt = None,
    cache: CacheOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time a whole model per operator kind on this machine: where it spends its time beyond conv and linear.

    Conv2d and linear are what the layer tables price; the rest (pooling, concatenation, elementwise
    scaling, LayerNorm, reshapes, the VM's own work) is what the whole-model calibration adds to the
    sum of the layers. The model is compiled as `hwloop measure` compiles it; each call of TVM's Relax VM is timed.

      hwloop profile --device local --model torchvision:mobilenet_v3_large --input-shape 1,3,64,64
    """
    from ..models import ModelError, load_model
    from ..profile import PRICED, profile
    from ..schedules import PolicyError, parse_policy
    from ..targets import resolve

    dev = get_device(device, registry)
    if dev.transport != "local" or dev.target.get("kind") != "llvm":
        fail(
            f"{dev.name}: profiles run on this machine's CPU; {dev.name} is a {dev.transport} "
            f"{dev.target.get('kind')} device"
        )
    try:
        policy = parse_policy(schedule)
        if policy.kind == "transfer":
            raise PolicyError("transfer:N schedules single layers; profile with default, untuned or tuned:N")
        module, shape = load_model(model, parse_shape(input_shape))
    except (ModelError, PolicyError) as exc:
        fail(str(exc))
    os.environ["TVM_NUM_THREADS"] = str(dev.protocol.threads)
    with err.status(f"{model}: compiling ({policy.name}) and profiling {runs} runs"):
        result = profile(
            module, shape, resolve(dev.target, dev.protocol.threads), policy, Path(cache or default_cache_dir()), runs
        )
    record = {
        "device": dev.name,
        "model": model,
        "input_shape": list(shape),
        "schedule": policy.name,
        "threads": dev.protocol.threads,
        **result.to_dict(),
    }
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table(
        "kind",
        "ms",
        "share",
        "calls",
        title=f"{model} {'x'.join(map(str, shape))} on {dev.name} · {policy.name}: {result.model_ms:.3f} ms",
    )
    for kind, ms in result.kinds.items():
        table.add_row(
            kind + ("" if kind in PRICED else " (rest)"),
            f"{ms:.4f}",
            f"{ms / result.model_ms:.1%}",
            str(result.calls[kind]),
        )
    out.print(table)
    out.print(
        f"conv2d and linear {result.priced_ms:.3f} ms, the rest {result.rest_ms:.3f} ms "
        f"({result.rest_ms / result.model_ms:.1%}); vm: the VM's allocations and checks"
    )
    if top:
        calls = Table("VM call", "ms", title=f"the {top} slowest calls")
        for symbol, ms in list(result.functions.items())[:top]:
            calls.add_row(symbol, f"{ms:.4f}")
        out.print(calls)
