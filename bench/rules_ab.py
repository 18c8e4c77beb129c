"""The ``default`` rules of another commit against today's, on the same layers and whole models,
built in one process and timed in turns, so a slow spell of the machine falls on both.

    .venv/bin/python -m bench.rules_ab --against f6fcf20 [--rounds 5] [--no-models]
        [--results docs/results/schedules/results]

The other commit's ``hwloop/schedules/default.py`` is read with ``git show`` and imported beside
today's. Each layer (and each whole model, lowered as ``hwloop measure`` lowers it) is built by
both, then timed ``--rounds`` times in turns with TVM's ``time_evaluator``, 1 thread pinned to
CPU 0; the fastest repeat of all rounds counts. A whole model is built a second time under the
other commit's rules and timed in the same turns: how far two builds of the same code differ.
The table is printed and written to ``--results/rules-COMMIT.json`` with the machine, the commit
and the command; ``docs/results/schedules/make.py`` turns it into the page's tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TVM_NUM_THREADS"] = "1"
os.sched_setaffinity(0, {0})

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from bench.machine import provenance  # noqa: E402
from hwloop.graph import compile_module, relax_module  # noqa: E402
from hwloop.kernels import prim_module, random_inputs  # noqa: E402
from hwloop.layers import LayerConfig  # noqa: E402
from hwloop.models import load_model  # noqa: E402
from hwloop.schedules import default as today  # noqa: E402
from hwloop.targets import resolve  # noqa: E402

LAYERS = [
    LayerConfig("conv2d", 3, 32, 112, 112, kernel=3, stride=2, padding=1),  # MobileNetV2 stem
    LayerConfig("conv2d", 16, 16, 32, 32, kernel=3, padding=1),  # ResNet-20 stage 1
    LayerConfig("conv2d", 64, 64, 8, 8, kernel=3, padding=1),  # ResNet-20 stage 3
    LayerConfig("conv2d", 128, 128, 28, 28, kernel=3, padding=1),  # ResNet-18 layer2
    LayerConfig("conv2d", 960, 320, 1, 1, kernel=1),  # MobileNetV2 last projection, 1x1 map
    LayerConfig("conv2d", 960, 319, 1, 1, kernel=1),  # the same, one channel fewer
    *(LayerConfig("conv2d", 672, cout, 1, 1, kernel=1) for cout in (160, 168)),  # MobileNetV3's squeeze-excitation
    # weight rows a multiple of 1, 2, 4 and 8 KiB, and counts beside them (ResNet-50's layer 4 at 64x64)
    *(LayerConfig("conv2d", cin, 512, 2, 2, kernel=1) for cin in (248, 256, 264, 504, 512, 520)),
    *(LayerConfig("conv2d", cin, 512, 2, 2, kernel=1) for cin in (1016, 1024, 1032, 2040, 2048, 2056)),
    *(LayerConfig("conv2d", cin, 512, 4, 4, kernel=3, padding=1) for cin in (252, 256, 260, 508, 512, 516)),
    *(LayerConfig("conv2d", cin, 512, 4, 4, kernel=1, stride=2) for cin in (248, 256, 264)),  # ResNet-18 downsample
    # pointwise convs whose positions fill whole vectors: MobileNetV2's at 224x224 (56x56, 28x28) and
    # at 64x64 (8x8, 4x4), expansion and projection, and counts a pruner leaves
    *(LayerConfig("conv2d", cin, cout, 56, 56, kernel=1) for cin, cout in ((24, 144), (144, 24))),
    *(LayerConfig("conv2d", cin, cout, 28, 28, kernel=1) for cin, cout in ((32, 192), (192, 32))),
    *(LayerConfig("conv2d", cin, cout, 8, 8, kernel=1) for cin, cout in ((64, 384), (384, 64))),
    *(LayerConfig("conv2d", cin, cout, 4, 4, kernel=1) for cin, cout in ((160, 960), (960, 160), (45, 13))),
    # reductions shorter than 8 into less than a vector of channels (pruned MobileNetV2 and ResNet-20), and beside them
    *(LayerConfig("conv2d", cin, cout, 14, 14, kernel=1) for cin, cout in ((4, 4), (7, 4), (8, 4), (7, 7), (5, 16))),
    *(LayerConfig("conv2d", cin, cout, 7, 7, kernel=1) for cin, cout in ((5, 4), (7, 16))),
    LayerConfig("conv2d", 6, 12, 28, 28, kernel=1, stride=2),
    # down a column: strided (a pruned ResNet's downsample), and 12-15 channels on taller maps
    *(LayerConfig("conv2d", cin, 6, size, size, kernel=1, stride=2) for cin, size in ((5, 28), (8, 28), (5, 14))),
    *(LayerConfig("conv2d", 2, cout, 28, 28, kernel=1, stride=2) for cout in (9, 12)),
    *(LayerConfig("conv2d", 4, cout, 14, 14, kernel=1) for cout in (9, 12)),
    *(LayerConfig("conv2d", 4, cout, 10, 10, kernel=1) for cout in (12, 15)),
    # an unpadded conv's input rows reach 1 KiB from 10 channels (a workspace per row until revision 11)
    *(LayerConfig("conv2d", cin, 20, 28, 28, kernel=1, stride=2) for cin in (9, 10, 11)),
    # depthwise convs of MobileNetV2 at 64x64 and 224x224 (an accumulator per channel), grouped convs, dense layers
    *(
        LayerConfig("depthwise_conv2d", c, c, size, size, kernel=3, stride=stride, padding=1, groups=c)
        for c, size, stride in ((960, 2, 1), (576, 4, 2), (192, 8, 1), (144, 56, 1), (32, 112, 1), (12, 28, 1))
    ),
    LayerConfig("conv2d", 128, 128, 6, 6, kernel=3, padding=1, groups=32),
    *(
        LayerConfig("linear", cin, cout, batch=batch)
        for cin, cout, batch in ((512, 10, 1), (1280, 1000, 1), (48, 96, 16))
    ),
]
MODELS = [  # (hwloop model spec, input shape)
    ("resnet20", (1, 3, 32, 32)),
    ("mobilenetv2", (1, 1, 28, 28)),
    ("mobilenetv2", (1, 3, 64, 64)),
    ("mobilenetv2", (1, 3, 224, 224)),
    ("resnet18", (1, 3, 64, 64)),
    ("torchvision:resnet50", (1, 3, 64, 64)),
    ("torchvision:mobilenet_v3_large", (1, 3, 64, 64)),
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


def fastest_ms(timers: dict, args: list, rounds: int) -> dict[str, float]:
    """Each timer's fastest repeat over ``rounds`` rounds taken in turns (the order reversed every
    other round), in milliseconds."""
    fastest = dict.fromkeys(timers, float("inf"))
    for round_ in range(rounds):
        for name in list(timers)[:: 1 if round_ % 2 == 0 else -1]:
            fastest[name] = min(fastest[name], *timers[name](*args).results)
    return {name: seconds * 1e3 for name, seconds in fastest.items()}


def time_layer(config: LayerConfig, rules: dict, target, rounds: int) -> dict[str, float]:
    device = tvm.cpu(0)
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
    return fastest_ms(timers, tensors, rounds)


def time_model(spec: str, shape: tuple[int, ...], rules: dict, target, rounds: int) -> dict[str, float]:
    device = tvm.cpu(0)
    model, shape = load_model(spec, shape, num_classes=10)
    lowered = relax_module(model, shape)
    data = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), device)
    timers = {
        name: relax.VirtualMachine(compile_module(module.schedule(lowered, target), target), device).time_evaluator(
            "main", device, number=5, repeat=5, min_repeat_ms=50
        )
        for name, module in rules.items()
    }
    return fastest_ms(timers, [data], rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="commit whose default rules are compared with today's")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-models", action="store_true", help="time the layers only")
    parser.add_argument("--results", type=Path, default=Path("docs/results/schedules/results"))
    args = parser.parse_args()

    record = {**provenance(), "against": args.against, "layers": [], "models": []}
    target = tvm.target.Target(resolve({"kind": "llvm", "mcpu": "host"}, 1))
    rules = {args.against: rules_of(args.against), "today": today}
    print(f"| layer or model | {args.against} ms | today ms |\n|---|---|---|")
    for config in LAYERS:
        ms = time_layer(config, rules, target, args.rounds)
        record["layers"].append({"layer": config.id, "against_ms": ms[args.against], "today_ms": ms["today"]})
        print(f"| `{config.id}` | {ms[args.against]:.4f} | {ms['today']:.4f} |", flush=True)
    for spec, shape in [] if args.no_models else MODELS:
        ms = time_model(spec, shape, {**rules, "again": rules[args.against]}, target, args.rounds)
        name = f"{spec} {'x'.join(map(str, shape[1:]))}"
        record["models"].append(
            {"model": name, "against_ms": ms[args.against], "today_ms": ms["today"], "again_ms": ms["again"]}
        )
        print(f"| {name} | {ms[args.against]:.3f} | {ms['today']:.3f} | {ms['again']:.3f} |", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"rules-{args.against}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
