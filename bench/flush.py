"""Warm or cold weights: how well the sum of a model's layers, timed alone, matches the whole model.

    .venv/bin/python -m bench.flush
        [--models resnet50,mobilenet_v3_large,efficientnet_b0,regnet_x_400mf,shufflenet_v2_x1_0]
        [--input-shape 1,3,64,64] [--work bench-flush] [--results docs/results/flush/results] [--cpu-lock FILE]

Per torchvision classifier (random weights, 10 classes): the dense model and copies thinned to 3/4,
1/2 and 1/4 are measured whole on the local device (``default`` schedules, 1 thread on CPU 0), and
every conv/linear layer they run is collected twice: with the benchmarks' warm protocol, and with
``flush: true`` (weights and output flushed from the caches before each run). For each model, the
sum of its layers under each protocol is set beside its measured latency, raw and through a
whole-model calibration (``measured ≈ scale × Σ layers + offset``) fitted on the model's other
copies. Results go to ``--results/MODEL.json`` with the machine, the commit and the command;
``docs/results/flush/make.py`` turns them into the page's tables. ``--cpu-lock`` names a lock file
held exclusively while the device times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_lock, local_registry, provenance
from hwloop import tables
from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models
from hwloop.layers import LayerConfig
from hwloop.models import load_model
from hwloop.predictor.calibration import fit_line
from hwloop.prune.groups import thinned_cases
from hwloop.registry import Device, load_registry
from hwloop.rows import Context
from hwloop.schedules import parse_policy
from hwloop.tracing import trace_layers

MODELS = "resnet50,mobilenet_v3_large,efficientnet_b0,regnet_x_400mf,shufflenet_v2_x1_0"
SHARES = (0.75, 0.5, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS, help="torchvision classifiers, comma-separated")
    parser.add_argument("--input-shape", default="1,3,64,64")
    parser.add_argument("--work", type=Path, default=Path("bench-flush"))
    parser.add_argument("--results", type=Path, default=Path("docs/results/flush/results"))
    parser.add_argument("--cpu-lock", type=Path, help="lock file, held exclusively while timing")
    args = parser.parse_args()

    shape = tuple(int(d) for d in args.input_shape.split(","))
    warm = load_registry(local_registry(args.work)).get("local")
    cold = warm.model_copy(
        update={
            "protocol": warm.protocol.model_copy(update={"flush": True, "number": 1, "min_repeat_ms": 0, "repeat": 100})
        }
    )
    os.environ["TVM_NUM_THREADS"] = str(warm.protocol.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        started = time.time()
        record = study(name, shape, warm, cold, args)
        record.update(provenance(), seconds=round(time.time() - started))
        path = args.results / f"{name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: done in {record['seconds']} s → {path}", flush=True)


def study(name: str, shape: tuple[int, ...], warm: Device, cold: Device, args) -> dict:
    """One model's copies measured whole, and the sums of their layers timed warm and cold."""
    policy, tables_dir, cache = parse_policy("default"), args.work / name / "tables", args.work / "cache"
    model, shape = load_model(f"torchvision:{name}", shape, 10)
    dense = ModelCase(f"torchvision:{name}", model, shape)
    cases = [dense, *thinned_cases(dense, SHARES)]
    configs = list({t.config: None for case in cases for t in trace_layers(case.model, shape)})
    with cpu_lock(args.cpu_lock, exclusive=True):
        measure_models(warm, cases, policy, tables_dir, cache)
        for device in (warm, cold):
            collect(device, configs, policy, tables_dir, cache)
    layers, models = tables.read(tables_dir, "local"), tables.read_models(tables_dir, "local")
    protocol_ids = {
        protocol: Context.of(device, policy).protocol_id for protocol, device in (("warm", warm), ("flushed", cold))
    }
    latency = {protocol: _fastest(layers, protocol_id) for protocol, protocol_id in protocol_ids.items()}
    mine = models[(models.status == "ok") & (models.protocol_id == protocol_ids["warm"])]
    copies = []
    for case_name, rows in mine.groupby("model", sort=False):
        runs = [LayerConfig.from_dict(d) for d in json.loads(rows.layers.iloc[0])]
        copies.append(
            {
                "copy": case_name.removeprefix(dense.name).removeprefix("@thinned:") or "dense",
                "measured_ms": float(rows.latency_ms.min()),
                "weights_mib": sum(math.prod(c.weight_shape) * np.dtype(c.dtype).itemsize for c in runs) / 2**20,
                **{f"{p}_ms": sum(latency[p][c.id] for c in runs) for p in latency},
            }
        )
    for protocol in latency:
        sums = [c[f"{protocol}_ms"] for c in copies]
        for index, copy in enumerate(copies):
            others = [i for i in range(len(copies)) if i != index]
            scale, offset = fit_line(
                np.array([sums[i] for i in others]), np.array([copies[i]["measured_ms"] for i in others])
            )
            copy[f"{protocol}_calibrated_ms"] = scale * sums[index] + offset
    for copy in copies:
        print(
            f"{name} {copy['copy']}: measured {copy['measured_ms']:.3f} ms, layers warm {copy['warm_ms']:.3f}, "
            f"flushed {copy['flushed_ms']:.3f} ({copy['weights_mib']:.1f} MiB of weights)",
            flush=True,
        )
    return {"model": name, "input_shape": list(shape), "unique_layers": len(latency["warm"]), "copies": copies}


def _fastest(layers, protocol_id: str) -> dict[str, float]:
    """Each config's fastest successful latency among ``layers`` of ``protocol_id``."""
    ok = layers[(layers.status == "ok") & (layers.protocol_id == protocol_id)]
    return ok.groupby("config_id").latency_ms.min().to_dict()


if __name__ == "__main__":
    main()
