"""What ``transfer:N`` buys over ``default``, and what it costs, on the local device.

    .venv/bin/python bench/transfer.py [--trials 32]

Collects a few aligned and ragged convs (channel counts a pruner produces) under ``default``,
``transfer:N`` and ``tuned:N`` on the built-in ``local`` device, into a temporary folder, and prints
each layer's median latency and build time. Layers are built in order, so the first layer between
two anchors pays for tuning them and the next ones reuse their records.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hwloop.collect import collect
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy

LAYERS = (
    [LayerConfig("conv2d", 128, c, 28, 28, 3, 1, 1) for c in (117, 100, 128)]
    + [LayerConfig("conv2d", 64, c, 56, 56, 3, 1, 1) for c in (61, 45, 64)]
    + [LayerConfig("conv2d", 96, c, 14, 14, 1) for c in (150, 200)]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per anchor / tuned layer")
    parser.add_argument("--no-tuned", action="store_true", help="skip tuned:N (a full search per layer)")
    args = parser.parse_args()

    device = load_registry(Path(tempfile.mkdtemp())).get("local")
    policies = ["default", f"transfer:{args.trials}"] + ([] if args.no_tuned else [f"tuned:{args.trials}"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tables, cache = Path(tmp) / "tables", Path(tmp) / "cache"
        for name in policies:
            for row in collect(device, LAYERS, parse_policy(name), tables, cache).rows:
                results[row["config_id"], name] = row
    header = "".join(f"{name + ' ms':>16}{'build s':>9}" for name in policies)
    print(f"{'layer':<42}{header}{'default/transfer':>18}")
    for layer in LAYERS:
        cells = ""
        for name in policies:
            row = results[layer.id, name]
            latency = f"{row['latency_ms']:.3f}" if row["status"] == "ok" else row["status"]
            cells += f"{latency:>16}{row['build_s']:>9.1f}"
        default, transfer = results[layer.id, policies[0]], results[layer.id, policies[1]]
        gain = (
            f"{default['latency_ms'] / transfer['latency_ms']:.2f}x"
            if default["status"] == transfer["status"] == "ok"
            else "-"
        )
        print(f"{layer.id:<42}{cells}{gain:>18}")


if __name__ == "__main__":
    main()
