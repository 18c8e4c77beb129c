"""torchvision's classifiers through the whole loop on the local device: channel groups, dense latency
measured and predicted, where the dense model spends its time, and one latency budget's pruned model
(measured and predicted speed-up, accuracy) beside FLOPs pruning at several MAC budgets, on
Fashion-MNIST resized to the input shape and repeated to 3 channels (no download).

    .venv/bin/python -m bench.zoo
        [--models resnet50,mobilenet_v3_large,efficientnet_b0,regnet_x_400mf,shufflenet_v2_x1_0]
        [--input-shape 1,3,64,64] [--budget 0.5] [--flops-budgets 0.4,0.5,0.6,0.7] [--samples 300] [--passes 3]
        [--train-samples 10000] [--test-samples 2000] [--epochs 3] [--dense-epochs 5] [--dense-lr 0.05]
        [--lr 0.01] [--work bench-zoo]
        [--results docs/results/zoo/results] [--cpu-lock FILE]

Per model: measure its layer space (``--samples`` configs, ``default`` schedule, 1 thread on CPU 0)
and the dense model with copies thinned to 3/4, 1/2 and 1/4 (the whole-model calibration), fit the
predictor, profile the dense model per operator kind, train the dense baseline once, prune with the
``latency`` method at ``--budget`` and with ``flops`` at each of ``--flops-budgets`` (fractions of
the dense MACs), and validate every pruned model on the device beside the dense one. Results go to
``--results/MODEL.json`` with the machine, the commit and the command, as each model finishes;
work files (tables, predictors, pruned models) stay under ``--work``, so a re-run reuses them.
``docs/results/zoo/make.py`` turns the folder into the page's tables. On a shared host, ``--cpu-lock``
names a lock file held exclusively while the device times and shared while models train.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

from bench.machine import cpu_lock, local_registry, provenance
from hwloop import tables
from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models
from hwloop.predictor import Predictor
from hwloop.profile import profile
from hwloop.prune import pipeline
from hwloop.prune.data import load_data
from hwloop.prune.groups import ChannelGroups, PruneError, thinned_cases
from hwloop.prune.train import DENSE_LR
from hwloop.prune.validate import validate
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.targets import resolve
from hwloop.tracing import model_space, trace_layers

MODELS = "resnet50,mobilenet_v3_large,efficientnet_b0,regnet_x_400mf,shufflenet_v2_x1_0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=MODELS, help="torchvision classifiers, comma-separated")
    parser.add_argument("--input-shape", default="1,3,64,64")
    parser.add_argument("--budget", type=float, default=0.5, help="latency budget, a fraction of the dense prediction")
    parser.add_argument("--flops-budgets", default="0.4,0.5,0.6,0.7", help="MACs fractions of the flops baseline")
    parser.add_argument("--samples", type=int, default=300, help="layer configs measured per model")
    parser.add_argument("--passes", type=int, default=3, help="sweeps measuring each layer and model")
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dense-epochs", type=int, default=5)
    parser.add_argument("--dense-lr", type=float, default=DENSE_LR, help="the dense baseline's learning rate")
    parser.add_argument("--lr", type=float, default=pipeline.Settings.lr, help="fine-tuning's learning rate")
    parser.add_argument("--work", type=Path, default=Path("bench-zoo"))
    parser.add_argument("--results", type=Path, default=Path("docs/results/zoo/results"))
    parser.add_argument("--cpu-lock", type=Path, help="lock file: exclusive while timing, shared while training")
    args = parser.parse_args()

    shape = tuple(int(d) for d in args.input_shape.split(","))
    device = load_registry(local_registry(args.work, args.passes)).get("local")
    os.environ["TVM_NUM_THREADS"] = str(device.protocol.threads)
    data = load_data("fashion-mnist", 64, args.train_samples, args.test_samples, input_shape=shape)
    args.results.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        started = time.time()
        record = study(f"torchvision:{name}", data, device, args)
        record.update(provenance(), seconds=round(time.time() - started))
        path = args.results / f"{name}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: done in {record['seconds']} s → {path}", flush=True)


def study(spec: str, data, device, args) -> dict:
    """One model's groups, dense latency, profile, and pruned models, validated."""
    name = spec.removeprefix("torchvision:")
    work, policy = args.work / name, parse_policy("default")
    tables_dir, cache = work / "tables", args.work / "cache"
    timing = partial(cpu_lock, args.cpu_lock, exclusive=True)
    training = partial(cpu_lock, args.cpu_lock, exclusive=False)
    model = pipeline.build(spec, data)
    groups = ChannelGroups(model, data.input_shape)
    record = {
        "model": spec,
        "input_shape": list(data.input_shape),
        "dataset": "fashion-mnist (resized, 3 channels)",
        "train_samples": len(data.train.dataset),
        "test_samples": len(data.test.dataset),
        "groups": len(groups.groups),
        "skipped": [vars(s) for s in groups.skipped],
        "grouped": sum(g.unit > 1 for g in groups.groups),
        "layers": len(groups.traced),
    }
    print(
        f"{name}: {record['groups']} groups ({record['grouped']} feeding grouped convs), "
        f"{len(groups.skipped)} kept dense",
        flush=True,
    )

    dense_case = ModelCase(spec, model, data.input_shape)
    calibration = [dense_case, *thinned_cases(dense_case, (0.75, 0.5, 0.25))]
    with timing():
        measure_models(device, calibration, policy, tables_dir, cache)
        collect(device, model_space(model, data.input_shape, args.samples), policy, tables_dir, cache)
        measure_models(device, calibration, policy, tables_dir, cache, force=True)
    with training():  # CPU work too: whatever times meanwhile waits for it
        predictor = Predictor.fit(
            tables.read(tables_dir, "local"), "local", "default", models=tables.read_models(tables_dir, "local")
        )
    layers = [t.config for t in trace_layers(model, data.input_shape)]
    record["predictor"] = {"rows": predictor.meta["rows"], "calibration": predictor.meta.get("calibration")}
    record["dense_predicted_ms"] = float(predictor.predict_model(layers))
    record["dense_layers_ms"] = float(predictor.predict(layers).sum())
    with timing():
        record["profile"] = profile(
            model, data.input_shape, resolve(device.target, device.protocol.threads), policy, cache, runs=20
        ).to_dict()

    with training():
        dense = pipeline.dense_baseline(spec, data, args.dense_epochs, 0, cache, lr=args.dense_lr)
    record["dense_accuracy"], record["dense_lr"] = dense[1], args.dense_lr
    runs = [("latency", args.budget)] + [("flops", float(b)) for b in args.flops_budgets.split(",")]
    record["pruned"] = []
    for method, budget in runs:
        out = work / "pruned" / f"{method}-{budget:g}"
        settings = pipeline.Settings(
            method=method,
            budget=budget,
            epochs=args.epochs,
            dense_epochs=args.dense_epochs,
            dense_lr=args.dense_lr,
            lr=args.lr,
        )
        if not _planned(out, predictor.schedule):
            try:
                with training():
                    pipeline.run(spec, data, predictor, settings, out, cache, dense=dense)
            except PruneError as exc:
                print(f"{name} {method} at {budget:g}: {exc}", flush=True)
                continue
        with timing():
            report = validate(device, out, tables_dir, cache)
        plan = json.loads((out / "plan.json").read_text())
        report.update(macs=plan["macs"], dense_macs=plan["dense_macs"])
        record["pruned"].append(report)
        speedup = f"{report['speedup']:.2f}x" if report["speedup"] else "failed"
        print(
            f"{name} {method} {budget:g}: accuracy {report['accuracy']:.2%}, measured {speedup}, "
            f"predicted {report['predicted_speedup']:.2f}x",
            flush=True,
        )
    record["dense_ms"] = min((r["dense_ms"] for r in record["pruned"] if r["speedup"]), default=None)
    return record


def _planned(out: Path, schedule: str) -> bool:
    """Whether ``out`` holds a pruning run priced under ``schedule`` (a run under rules of an earlier
    revision is made again)."""
    plan = out / "plan.json"
    return plan.is_file() and json.loads(plan.read_text()).get("schedule") == schedule


if __name__ == "__main__":
    main()
