"""Latency vs output channels (1…128) of one conv under the ``default`` policy, with torch eager.

    .venv/bin/python -m bench.staircase [--in-channels 64] [--size 28] [--max-out 128] [--plot staircase.png]

A channel pruner leaves counts that are not multiples of the vector width; compiled code runs
whole vectors, so latency climbs in steps. The conv is measured through ``hwloop.collect`` on the
``local`` device (1 thread pinned to CPU 0); torch eager runs pinned to the same CPU, one thread.
Prints one line per count and writes the plot.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench.schedules import REGISTRY, torch_layer_ms  # noqa: E402
from hwloop.collect import collect  # noqa: E402
from hwloop.layers import LayerConfig  # noqa: E402
from hwloop.registry import load_registry  # noqa: E402
from hwloop.schedules import parse_policy  # noqa: E402
from hwloop.schedules.default import vector_lanes  # noqa: E402
from hwloop.targets import resolve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=28, help="input height and width")
    parser.add_argument("--max-out", type=int, default=128)
    parser.add_argument("--plot", type=Path, default=Path("staircase.png"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    (tmp / "devices.yaml").write_text(REGISTRY)
    device = load_registry(tmp).get("local")
    configs = [
        LayerConfig("conv2d", args.in_channels, out, args.size, args.size, kernel=3, padding=1)
        for out in range(1, args.max_out + 1)
    ]
    rows = {
        row["out_channels"]: row
        for row in collect(device, configs, parse_policy("default"), tmp / "tables", tmp / "cache").rows
    }
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    counts = [c.out_channels for c in configs]
    default = [rows[c]["latency_ms"] if rows[c]["status"] == "ok" else float("nan") for c in counts]
    eager = [torch_layer_ms(c) for c in configs]
    print("| out channels | default ms | torch eager ms |")
    print("|---|---|---|")
    for count, ours, theirs in zip(counts, default, eager):
        print(f"| {count} | {ours:.4f} | {theirs:.4f} |")

    lanes = vector_lanes(resolve(device.target, 1))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.step(counts, default, where="mid", label="hwloop default schedule (TVM)", color="tab:blue")
    ax.plot(counts, eager, ".", markersize=3, label="torch eager", color="tab:orange")
    for step in range(lanes, args.max_out + 1, lanes):
        ax.axvline(step, color="grey", linewidth=0.5, alpha=0.4)
    ax.set_xlabel(f"output channels (grey lines: multiples of {lanes}, the fp32 vector width)")
    ax.set_ylabel("latency (ms), 1 thread")
    ax.set_title(f"conv {args.in_channels}→Cout 3×3, {args.size}×{args.size}, batch 1, on {device.name}")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"plot → {args.plot}")


if __name__ == "__main__":
    main()
