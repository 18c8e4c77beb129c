"""Collection throughput on the local device: configs/min and where the wall time goes.

    .venv/bin/python bench/collect_throughput.py [--model resnet20] [--samples 60] [--schedule untuned]

Runs one collection with an empty build cache and one with a warm cache (``--force``), with the
built-in ``local`` device and its default protocol, into a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hwloop.collect import collect
from hwloop.models import load_model
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.tracing import model_space


def report(label: str, summary) -> None:
    rows = summary.rows
    timed = sum(r["timing_s"] for r in rows)
    check = sum(r["measure_s"] - r["timing_s"] for r in rows)
    wall = summary.wall_s
    print(
        f"{label}: {len(rows)} configs in {wall:.1f} s = {len(rows) * 60 / wall:.1f} configs/min; "
        f"timed runs {timed / wall:.0%} of wall time, outside them {1 - timed / wall:.0%} "
        f"(upload + load + torch check {check / wall:.0%}, start-up + build waits + table writes "
        f"{(wall - timed - check) / wall:.0%}); failed {summary.failed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--schedule", default="untuned")
    args = parser.parse_args()

    device = load_registry(Path(tempfile.mkdtemp())).get("local")
    model, shape = load_model(args.model)
    configs = model_space(model, shape, args.samples)
    policy = parse_policy(args.schedule)
    with tempfile.TemporaryDirectory() as tmp:
        tables, cache = Path(tmp) / "tables", Path(tmp) / "cache"
        print(f"{args.model}: {len(configs)} configs, schedule {policy.name}, protocol {device.protocol}")
        report("cold build cache", collect(device, configs, policy, tables, cache))
        report("warm build cache", collect(device, configs, policy, tables, cache, force=True))


if __name__ == "__main__":
    main()
