"""Latency of layers of ResNet-18/20/56 and MobileNetV2 under each schedule policy, and torch eager.

    .venv/bin/python bench/schedules.py [--policies untuned,default] [--tuned 64]

Every policy is measured through ``hwloop.collect`` on the ``local`` device (1 thread pinned to
CPU 0, warm-up 5, repeat 10, min_repeat_ms 20); torch eager runs in this process, pinned to the
same CPU with one thread. Build (and tuning) time is the builder's wall time for that layer.
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

from hwloop import tables
from hwloop.collect import collect
from hwloop.kernels import random_inputs
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

LAYERS = [
    LayerConfig("conv2d", 3, 32, 112, 112, kernel=3, stride=2, padding=1),        # MobileNetV2 stem (as in the issue)
    LayerConfig("conv2d", 128, 128, 28, 28, kernel=3, padding=1),                 # ResNet-18 layer2
    LayerConfig("conv2d", 64, 64, 56, 56, kernel=3, padding=1),                   # ResNet-18 layer1
    LayerConfig("conv2d", 64, 256, 56, 56, kernel=1),                             # 1x1 expansion
    LayerConfig("conv2d", 16, 16, 32, 32, kernel=3, padding=1),                   # ResNet-20/56 stage 1
    LayerConfig("conv2d", 64, 64, 8, 8, kernel=3, padding=1),                     # ResNet-20/56 stage 3
    LayerConfig("depthwise_conv2d", 96, 96, 112, 112, kernel=3, stride=2, padding=1, groups=96),  # MobileNetV2
    LayerConfig("depthwise_conv2d", 144, 144, 56, 56, kernel=3, padding=1, groups=144),           # MobileNetV2
    LayerConfig("conv2d", 144, 24, 56, 56, kernel=1),                             # MobileNetV2 projection
    LayerConfig("linear", 512, 1000),                                             # ResNet-18 classifier
]

REGISTRY = """\
devices:
  local:
    transport: local
    target: {kind: llvm, mcpu: host}
    protocol: {warmup: 5, number: 10, repeat: 10, min_repeat_ms: 20, threads: 1, cpus: [0]}
"""


def torch_ms(config: LayerConfig, repeat: int = 10) -> float:
    data, weight = (torch.from_numpy(a) for a in random_inputs(config))

    def run():
        if config.op == "linear":
            return F.linear(data, weight)
        return F.conv2d(data, weight, stride=config.stride, padding=config.padding, groups=config.groups)

    with torch.no_grad():
        for _ in range(5):
            run()
        times = []
        for _ in range(repeat):
            number, start = 0, time.perf_counter()
            while time.perf_counter() - start < 0.02 or number < 10:
                run()
                number += 1
            times.append((time.perf_counter() - start) / number * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="untuned,default")
    parser.add_argument("--tuned", type=int, default=0, help="also tuned:N with this many trials (slow)")
    args = parser.parse_args()
    policies = args.policies.split(",") + ([f"tuned:{args.tuned}"] if args.tuned else [])

    tmp = Path(tempfile.mkdtemp())
    (tmp / "devices.yaml").write_text(REGISTRY)
    device = load_registry(tmp).get("local")
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name in policies:
        collect(device, LAYERS, parse_policy(name), tmp / "tables", tmp / "cache")
        frame = tables.read(tmp / "tables", "local")
        frame = frame[(frame.schedule == name) & (frame.status == "ok")]
        results[name] = {row.config_id: (row.latency_ms, row.build_s) for row in frame.itertuples()}

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    header = "| layer | " + " | ".join(f"{p} ms (build s)" for p in policies) + " | torch 1 thread ms |"
    print(header)
    print("|" + "---|" * (len(policies) + 2))
    for config in LAYERS:
        cells = []
        for name in policies:
            latency, build_s = results[name].get(config.id, (float("nan"), float("nan")))
            cells.append(f"{latency:.3f} ({build_s:.1f})")
        print(f"| `{config.id}` | " + " | ".join(cells) + f" | {torch_ms(config):.3f} |")


if __name__ == "__main__":
    main()
