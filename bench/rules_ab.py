"""The ``default`` rules of another commit against today's, on the same layers, built in one process
and timed in turns, so a slow spell of the machine falls on both.

    .venv/bin/python bench/rules_ab.py --against f6fcf20 [--rounds 5]

The other commit's ``hwloop/schedules/default.py`` is read with ``git show`` and imported beside
today's. Each layer is built by both, then timed ``--rounds`` times in turns with TVM's
``time_evaluator`` (number 20, repeat 10, min_repeat_ms 20), 1 thread pinned to CPU 0; the
fastest repeat of all rounds counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TVM_NUM_THREADS"] = "1"
os.sched_setaffinity(0, {0})

import tvm  # noqa: E402

from hwloop.kernels import prim_module, random_inputs  # noqa: E402
from hwloop.layers import LayerConfig  # noqa: E402
from hwloop.schedules import default as today  # noqa: E402
from hwloop.targets import resolve  # noqa: E402

LAYERS = [
    LayerConfig("conv2d", 3, 32, 112, 112, kernel=3, stride=2, padding=1),  # MobileNetV2 stem
    LayerConfig("conv2d", 16, 16, 32, 32, kernel=3, padding=1),  # ResNet-20 stage 1
    LayerConfig("conv2d", 64, 64, 8, 8, kernel=3, padding=1),  # ResNet-20 stage 3
    LayerConfig("conv2d", 128, 128, 28, 28, kernel=3, padding=1),  # ResNet-18 layer2
    LayerConfig("conv2d", 960, 320, 1, 1, kernel=1),  # MobileNetV2 last projection, 1x1 map
    LayerConfig("conv2d", 960, 319, 1, 1, kernel=1),  # the same, one channel fewer
    *(LayerConfig("conv2d", cin, 256, 2, 2, kernel=3, padding=1) for cin in (252, 256, 260)),  # 1 KiB weight rows
    *(LayerConfig("conv2d", cin, 512, 4, 4, kernel=1, stride=2) for cin in (248, 256, 264)),  # ResNet-18 downsample
]


def rules_of(commit: str):
    """The ``default`` rules module as it was at ``commit``."""
    source = subprocess.run(
        ["git", "show", f"{commit}:hwloop/schedules/default.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "default_rules.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"default_rules_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="commit whose default rules are compared with today's")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    target = resolve({"kind": "llvm", "mcpu": "host"}, 1)
    rules = {args.against: rules_of(args.against), "today": today}
    device = tvm.cpu(0)
    print(f"| layer | {args.against} ms | today ms |\n|---|---|---|")
    for config in LAYERS:
        data, weight = random_inputs(config)
        tensors = [
            tvm.runtime.tensor(data, device),
            tvm.runtime.tensor(weight, device),
            tvm.runtime.empty(config.output_shape, config.dtype, device),
        ]
        timers = {
            name: tvm.compile(module.schedule(prim_module(config), target), target=target).mod.time_evaluator(
                "main", device, number=20, repeat=10, min_repeat_ms=20
            )
            for name, module in rules.items()
        }
        fastest = dict.fromkeys(timers, float("inf"))
        for _ in range(args.rounds):  # in turns
            for name, timer in timers.items():
                fastest[name] = min(fastest[name], *timer(*tensors).results)
        print(f"| `{config.id}` | {fastest[args.against] * 1e3:.4f} | {fastest['today'] * 1e3:.4f} |", flush=True)


if __name__ == "__main__":
    main()
