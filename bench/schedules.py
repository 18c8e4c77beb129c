"""Latency of layers of ResNet-18/20/56 and MobileNetV2 under each schedule policy, torch eager
beside them, and whole models under ``default`` against torch.

    .venv/bin/python bench/schedules.py [--policies untuned,default,transfer:64,tuned:64]
                                        [--models resnet20,resnet18,mobilenetv2]

Every policy is measured through ``hwloop.collect`` on the ``local`` device (1 thread pinned to
CPU 0, warm-up 5, repeat 10, min_repeat_ms 20); whole models through ``hwloop.endtoend``. Torch
eager runs in this process, pinned to the same CPU with one thread. Build time is the builder's
wall time for that layer, tuning included; ``tuned:N`` and ``transfer:N`` keep their records in a
temporary cache, so every search is paid in full.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models, reference_io
from hwloop.kernels import random_inputs
from hwloop.layers import LayerConfig
from hwloop.models import load_model
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

LAYERS = [
    LayerConfig("conv2d", 3, 32, 112, 112, kernel=3, stride=2, padding=1),  # MobileNetV2 stem
    LayerConfig("conv2d", 128, 128, 28, 28, kernel=3, padding=1),  # ResNet-18 layer2
    LayerConfig("conv2d", 64, 64, 56, 56, kernel=3, padding=1),  # ResNet-18 layer1
    LayerConfig("conv2d", 64, 256, 56, 56, kernel=1),  # 1x1 expansion
    LayerConfig("conv2d", 16, 16, 32, 32, kernel=3, padding=1),  # ResNet-20/56 stage 1
    LayerConfig("conv2d", 64, 64, 8, 8, kernel=3, padding=1),  # ResNet-20/56 stage 3
    LayerConfig("depthwise_conv2d", 96, 96, 112, 112, kernel=3, stride=2, padding=1, groups=96),  # MobileNetV2
    LayerConfig("depthwise_conv2d", 144, 144, 56, 56, kernel=3, padding=1, groups=144),  # MobileNetV2
    LayerConfig("conv2d", 144, 24, 56, 56, kernel=1),  # MobileNetV2 projection
    LayerConfig("conv2d", 960, 320, 1, 1, kernel=1),  # MobileNetV2 last projection, 28x28 input
    LayerConfig("conv2d", 960, 319, 1, 1, kernel=1),  # the same, one channel fewer
    LayerConfig("linear", 512, 1000),  # ResNet-18 classifier
]

REGISTRY = """\
devices:
  local:
    transport: local
    target: {kind: llvm, mcpu: host}
    protocol: {warmup: 5, number: 10, repeat: 10, min_repeat_ms: 20, threads: 1, cpus: [0]}
"""


def median_ms(run, repeat: int = 10) -> float:
    """Median over ``repeat`` repeats of the mean time of ``run()``, each repeat at least 20 ms."""
    with torch.no_grad():
        for _ in range(5):
            run()
        times = []
        for _ in range(repeat):
            number, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.02 or number < 3:
                run()
                number += 1
            times.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(times)


def torch_layer_ms(config: LayerConfig) -> float:
    data, weight = (torch.from_numpy(a) for a in random_inputs(config))
    if config.op == "linear":
        return median_ms(lambda: F.linear(data, weight))
    return median_ms(lambda: F.conv2d(data, weight, stride=config.stride, padding=config.padding, groups=config.groups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="untuned,default", help="comma-separated schedule policies")
    parser.add_argument("--models", default="resnet20,resnet18", help="whole models timed under default vs torch")
    args = parser.parse_args()
    policies = args.policies.split(",")

    tmp = Path(tempfile.mkdtemp())
    (tmp / "devices.yaml").write_text(REGISTRY)
    device = load_registry(tmp).get("local")
    results: dict[tuple[str, str], dict] = {}
    for name in policies:
        for row in collect(device, LAYERS, parse_policy(name), tmp / "tables", tmp / "cache").rows:
            results[row["config_id"], name] = row
    cases = [ModelCase(name, *load_model(name)) for name in args.models.split(",") if name]
    model_rows = measure_models(device, cases, parse_policy("default"), tmp / "tables", tmp / "cache") if cases else []

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    print("| layer | " + " | ".join(f"{p} ms (build s)" for p in policies) + " | torch eager ms |")
    print("|" + "---|" * (len(policies) + 2))
    for config in LAYERS:
        cells = []
        for name in policies:
            row = results[config.id, name]
            latency = f"{row['latency_ms']:.3f}" if row["status"] == "ok" else row["status"]
            cells.append(f"{latency} ({row['build_s']:.1f})")
        print(f"| `{config.id}` | " + " | ".join(cells) + f" | {torch_layer_ms(config):.3f} |")
    if model_rows:
        print("\n| model | default ms | build s | torch eager ms | torch / default |")
        print("|---|---|---|---|---|")
        for case, row in zip(cases, model_rows):
            data, _ = reference_io(case.model, case.input_shape)
            x = torch.from_numpy(data)
            eager = median_ms(lambda model=case.model, x=x: model(x))
            latency = row["latency_ms"] if row["status"] == "ok" else float("nan")
            print(
                f"| {case.name} {'x'.join(map(str, case.input_shape))} | {latency:.3f} | {row['build_s']:.1f} | "
                f"{eager:.3f} | {eager / latency:.2f}x |"
            )


if __name__ == "__main__":
    main()
