"""The latency predictor on the local device: accuracy, learning curves, whole models, query speed.

    .venv/bin/python bench/predictor.py [--samples 600] [--passes 3] [--work bench-out/predictor] [--quick]

1. Measures a layer table under ``default`` on the ``local`` device (the built-in protocol:
   10 warm-ups, 20 repeats of >= 20 ms, 1 thread pinned to CPU 0, with ``--passes`` sweeps): the
   dense layers of ResNet-20 and MobileNetV2 (64x64 input) and seeded random prunings of them,
   ``--samples`` configs in all. The folder ``--work`` keeps the tables, so a re-run measures only
   what is missing.
2. Prints held-out accuracy (random configs, unseen channel counts, unseen shapes) per op family
   beside the noise floor, then learning curves (held-out share within ±10 % against samples,
   random order and adaptive sampling replayed on the measured rows).
3. Measures whole models end to end (ResNet-20 at four channel configurations, dense and pruned,
   and MobileNetV2 at two) and prints each one's measured latency, the predicted sum of its
   layers and the calibrated prediction fitted without that model.
4. Times batched queries: 1 M distinct configs, 1 M configs of a pruning search (a 256 x 256
   in/out grid of one layer, repeated), and a cached ``latency_grid``.

``--quick`` (60 samples, ResNet-20 variants only) checks the script in a few minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hwloop import tables
from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models
from hwloop.layers import LayerConfig
from hwloop.models import ResNet, load_model
from hwloop.predictor import Predictor
from hwloop.predictor.evaluation import splits
from hwloop.predictor.sampling import learning_curve
from hwloop.predictor.selection import select
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.space import model_space

BANDS = ("within_5", "within_10", "within_15")
REGISTRY = """\
devices:
  local:
    transport: local
    target: {{kind: llvm, mcpu: host}}
    protocol: {{threads: 1, cpus: [0], passes: {passes}}}
"""


def resnet20(widths: tuple[int, int, int]) -> ModelCase:
    model = ResNet(widths, (3, 3, 3), num_classes=10, in_channels=3, imagenet_stem=False).eval()
    return ModelCase(f"resnet20-{'-'.join(map(str, widths))}", model, (1, 3, 32, 32))


def model_cases(quick: bool) -> list[ModelCase]:
    cases = [resnet20(w) for w in ((16, 32, 64), (13, 27, 45), (12, 24, 48), (16, 29, 58))]
    if not quick:
        mobilenet, shape = load_model("mobilenetv2", (1, 3, 64, 64))
        cases.append(ModelCase("mobilenetv2-64", mobilenet.eval(), shape))
    return cases


def layer_space(samples: int, quick: bool) -> list[LayerConfig]:
    resnet, shape = load_model("resnet20")
    if quick:
        return model_space(resnet, shape, samples, seed=0)
    mobilenet, mshape = load_model("mobilenetv2", (1, 3, 64, 64))
    return model_space(resnet, shape, samples // 2, seed=0) + model_space(mobilenet, mshape, samples - samples // 2, seed=0)


def row(name: str, s: dict) -> str:
    rho = f"{s['spearman']:.3f}" if s.get("spearman") is not None else "-"
    rmse = f"{s['rmse_ms']:.4f}" if "rmse_ms" in s else "-"
    return (f"{name:<28}{s.get('rows', ''):>6}" + "".join(f"{100 * s[b]:>8.1f}" for b in BANDS)
            + f"{rmse:>10}{100 * s['mape']:>8.1f}{rho:>9}")


def print_accuracy(metrics: dict) -> None:
    print(f"{'held out':<28}{'rows':>6}{'±5 %':>8}{'±10 %':>8}{'±15 %':>8}{'RMSE ms':>10}{'MAPE':>8}{'Spearman':>9}")
    for split, report in metrics.items():
        print(row(split, report))
        for op, s in report["ops"].items():
            print(row(f"  {op}", s))
        print(row("  noise: repeats", report["noise"]))
        if report["noise"].get("passes"):
            print(row("  noise: passes", report["noise"]["passes"]))


def print_learning_curves(rows, lanes: int) -> None:
    test = splits(rows)["config"]
    pool = int((~test).sum())
    sizes = sorted({int(s) for s in np.geomspace(min(20, pool), pool, 7)})
    print(f"\nlearning curve: held-out ({int(test.sum())} rows) share within ±10 % / MAPE")
    print(f"{'samples':>8}{'random':>16}{'adaptive':>16}")
    random_curve = learning_curve(rows, test, sizes, lanes, adaptive=False)
    adaptive_curve = learning_curve(rows, test, sizes, lanes, adaptive=True)
    for r, a in zip(random_curve, adaptive_curve):
        print(f"{r['samples']:>8}{100 * r['within_10']:>9.1f} / {100 * r['mape']:<4.0f}"
              f"{100 * a['within_10']:>9.1f} / {100 * a['mape']:<4.0f}")


def print_models(calibration: dict | None) -> None:
    if not calibration:
        print("\nno whole-model rows")
        return
    print(f"\nwhole models: scale {calibration['scale']:.3f}, rest {calibration['offset_ms']:.3f} ms "
          "(each predicted by a calibration fitted without it)")
    print(f"{'model':<24}{'measured ms':>12}{'layers ms':>12}{'predicted ms':>14}{'error':>9}")
    for case in calibration["cases"]:
        print(f"{case['model']:<24}{case['measured_ms']:>12.3f}{case['layers_ms']:>12.3f}"
              f"{case['predicted_ms']:>14.3f}{100 * case['error']:>+8.1f}%")
    print(f"mean absolute error {100 * calibration['held_out_mape']:.1f} %" + _paced(calibration))


def _paced(calibration: dict) -> str:
    paced = calibration["held_out_paced_mape"]
    return f"; with the pace of the models timed beside each: {100 * paced:.1f} %" if paced is not None else ""


def print_throughput(predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    base = LayerConfig("conv2d", 64, 64, 56, 56, kernel=3, padding=1)
    cols = {c: np.full(n, v) for c, v in base.to_dict().items()}
    cols.update(in_channels=rng.integers(1, 257, n), out_channels=rng.integers(1, 257, n),
                input_h=rng.integers(7, 113, n))
    cols["input_w"] = cols["input_h"]
    print("\nbatched queries (best of 3)")
    for label, batch in (("1 M distinct configs", cols),
                         ("1 M configs of a pruning search", {**cols, "input_h": np.full(n, 56), "input_w": np.full(n, 56)})):
        best = min(_seconds(lambda: predictor.predict_columns(batch)) for _ in range(3))
        print(f"{label:<34}{best:>8.3f} s  {n / best / 1e6:>6.2f} M configs/s")
    counts = np.arange(1, 257)
    fresh = _seconds(lambda: predictor.latency_grid(base, counts, counts))
    cached = _seconds(lambda: predictor.latency_grid(base, counts, counts))
    print(f"{'latency_grid 256 x 256, first':<34}{fresh:>8.3f} s\n{'latency_grid 256 x 256, cached':<34}{cached * 1e6:>8.1f} µs")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=600, help="layer configs to measure")
    parser.add_argument("--work", type=Path, default=Path("bench-out/predictor"), help="tables and cache (kept)")
    parser.add_argument("--passes", type=int, default=3, help="sweeps measuring each config (the fastest counts)")
    parser.add_argument("--quick", action="store_true", help="60 samples, ResNet-20 variants only")
    args = parser.parse_args()
    samples = 60 if args.quick else args.samples

    registry = Path(tempfile.mkdtemp())
    (registry / "devices.yaml").write_text(REGISTRY.format(passes=args.passes))
    device = load_registry(registry).get("local")
    policy = parse_policy("default")
    tables_dir, cache = args.work / "tables", args.work / "cache"
    start = time.perf_counter()
    summary = collect(device, layer_space(samples, args.quick), policy, tables_dir, cache)
    print(f"layers: {summary.measured} measured now, {summary.skipped} already, {summary.failed} failed "
          f"({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    measure_models(device, model_cases(args.quick), policy, tables_dir, cache)
    print(f"whole models measured in {time.perf_counter() - start:.0f} s\n")

    table, models = tables.read(tables_dir, "local"), tables.read_models(tables_dir, "local")
    predictor = Predictor.fit(table, "local", models=models)
    print(f"{device.name} · default · {predictor.meta['rows']} rows · {predictor.lanes} float32 lanes\n")
    print_accuracy(predictor.meta["metrics"])
    print_learning_curves(select(table, "bench", "default", predictor.protocol_id, "local").rows, predictor.lanes)
    print_models(predictor.meta["calibration"])
    print_throughput(predictor)


if __name__ == "__main__":
    main()
