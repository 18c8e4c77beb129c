"""Every torchvision classifier through ``hwloop prune --dry-run``: whether hwloop traces it, how many
channel groups it finds (and keeps dense), and whether the model pruned to about half per group
computes what the masked dense model does.

    .venv/bin/python -m bench.dryrun [--models NAME,...] [--input-shape 1,3,64,64]
        [--max-parameters 200] [--memory 12] [--timeout 600] [--results docs/results/dryrun/results]

Random weights, 10 classes. Transformers (ViT, Swin, MaxViT) take 224x224, which their position
embeddings or windows need; Inception v3 takes 96x96, its smallest valid input; the others
``--input-shape``. Each model runs in its own process (one torch thread, at most ``--memory`` GiB
of address space), so one that runs out of memory or time is a row, not the end of the sweep;
models above ``--max-parameters`` million are listed, not run. Results go to
``--results/dryrun.json`` with the machine, the commit and the command, after each model; a run
of the same commit resumes it. ``docs/results/dryrun/make.py`` turns it into the page's table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import provenance

FIXED_SIZES = {"vit": 224, "swin": 224, "maxvit": 224, "inception": 96}


def input_shape(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    for prefix, size in FIXED_SIZES.items():
        if name.startswith(prefix):
            return (1, 3, size, size)
    return default


def one(name: str, shape: tuple[int, ...], max_parameters: float) -> dict:
    """The dry run of ``torchvision:name``, in this process."""
    import torch

    from hwloop.models import load_model
    from hwloop.prune.dryrun import dry_run

    torch.set_num_threads(1)
    start = time.perf_counter()
    model, shape = load_model(f"torchvision:{name}", shape, num_classes=10)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    row = {"model": name, "input": list(shape), "parameters_m": round(parameters, 1)}
    if parameters > max_parameters:
        return {**row, "outcome": "not run", "detail": f"above {max_parameters:g}M parameters"}
    try:
        run = dry_run(model, shape)
    except Exception as exc:  # noqa: BLE001 - a model hwloop refuses is a row of the sweep
        return {**row, "outcome": "refused", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return {
        **row,
        "outcome": "pruned",
        "groups": len(run.groups.groups),
        "dense": len(run.groups.skipped),
        "shapes_hold": run.shapes_hold,
        "difference": run.difference,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="torchvision classifiers, comma-separated (default: all)")
    parser.add_argument("--input-shape", default="1,3,64,64")
    parser.add_argument("--max-parameters", type=float, default=200.0, help="millions")
    parser.add_argument("--memory", type=float, default=12.0, help="GiB of address space per model")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument("--results", type=Path, default=Path("docs/results/dryrun/results"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.input_shape.split(","))
    if args.one:
        print(json.dumps(one(args.one, input_shape(args.one, shape), args.max_parameters)))
        return

    from hwloop.models import torchvision_classifiers

    names = args.models.split(",") if args.models else torchvision_classifiers()
    results = args.results / "dryrun.json"
    record = {**provenance(), "rows": []}
    if results.is_file():  # a run of the same code resumes: the models it has are not run again
        earlier = json.loads(results.read_text())
        if earlier["commit"] == record["commit"]:
            record["rows"] = [row for row in earlier["rows"] if row["model"] in names]
    done = {row["model"] for row in record["rows"]}
    limit = int(args.memory * 2**30)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    args.results.mkdir(parents=True, exist_ok=True)
    for name in [name for name in names if name not in done]:
        command = [sys.executable, "-m", "bench.dryrun", "--one", name, "--input-shape", args.input_shape]
        command += ["--max-parameters", str(args.max_parameters)]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, preexec_fn=cap_memory)
            lines = child.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if child.returncode == 0 and lines else None
            if row is None:
                last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
                row = {"model": name, "outcome": "failed", "detail": last[:300]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "outcome": "failed", "detail": f"no result within {args.timeout:g} s"}
        record["rows"].append(row)
        print(json.dumps(row), flush=True)
        results.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
