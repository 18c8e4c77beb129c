"""Pruning methods compared on the local device: a ResNet on Fashion-MNIST (or CIFAR-10), each method at a few
latency budgets; accuracy, predicted and measured latency, measured speed-up.

    .venv/bin/python -m bench.prune [--model resnet20|bench/models.py:resnet20_x075]
        [--dataset fashion-mnist|cifar10:PATH]
        [--budgets 0.4,0.6] [--flops-budgets 0.5,0.6]
        [--methods latency,afcp,lws,flops,flops:1,uniform] [--board-rounds 3] [--board-methods latency,afcp,lws]
        [--min-ratio 0.25] [--proposals 1] [--epochs 3] [--dense-epochs 10] [--train-samples N]
        [--samples 300] [--thinned 0.75,0.5,0.25] [--passes 3]
        [--revalidate 0] [--work bench-prune] [--results docs/results/prune/results] [--cpu-lock FILE]

Steps: measure the model's layer space on the ``local`` device (1 thread pinned to CPU 0, ``default``
schedule policy) and a few whole models (the dense one and copies thinned to ``--thinned``, for the
predictor's whole-model calibration, timed before and again after the layers so that one slow
spell does not set it); fit the predictor (calibrated on those models alone: the pruned models a
run validates do not calibrate a later run's predictions); train the dense baseline once; then for
each method and budget prune, fine-tune with distillation, and validate on the device (dense and
pruned model compiled whole and timed end to end, ``--passes`` times each, the fastest counting).
``flops`` is given its budgets (``--flops-budgets``, default ``--budgets``) as fractions of the
dense MACs; ``METHOD:N`` rounds a baseline's counts to multiples of N (``flops:1``: Torch-Pruning's
default, no rounding; plain ``flops`` rounds to the vector width); a ``--min-ratio`` other than
the default adds ``-minR`` to the labels, ``--proposals N`` (``latency`` ranks N plans by short
fine-tunes) ``-pN``. The methods of
``--board-methods`` time their plans on the device before fine-tuning and re-plan up to
``--board-rounds`` times (0: open loop); the baselines stay open loop, as their tools are.
``--revalidate K`` then validates every output under --work K more times, in turns, so that each
model's passes are spread over minutes; the speed-ups then compare each model's fastest latency
with the dense model's fastest over all of them (``--methods '' --revalidate 3``: only that).

Work files (tables, predictor, pruned models) stay under --work, so a re-run reuses the measured
tables, the dense baseline and every pruned model already written, and only measures again. The
results go to ``--results/MODEL@DATASET.json`` with the machine, the commit and the command;
results of methods and budgets not in this run are kept, so the file holds every output measured
so far. ``docs/results/prune/make.py`` turns the folder into the page's tables and plots. On a
shared host, ``--cpu-lock`` names a lock file held exclusively while the device times (a board's
plans, with their fine-tunes between) and shared while models train.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

from bench.machine import cpu_lock, local_registry, provenance
from hwloop import tables
from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models
from hwloop.predictor import Predictor
from hwloop.prune import MIN_RATIO, pipeline
from hwloop.prune.board import Board
from hwloop.prune.data import DATASET_HELP, load_data
from hwloop.prune.groups import PruneError, thinned_cases
from hwloop.prune.validate import judged, validate
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.tracing import model_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist", help=DATASET_HELP)
    parser.add_argument("--budgets", default="0.4,0.6")
    parser.add_argument(
        "--flops-budgets",
        default=None,
        help="MACs fractions for the flops baseline (default: --budgets); its curve should span the others' accuracy",
    )
    parser.add_argument("--methods", default="latency,afcp,lws,flops,flops:1,uniform")
    parser.add_argument("--board-rounds", type=int, default=3, help="plans timed on the device per run (0: open loop)")
    parser.add_argument("--board-methods", default="latency,afcp,lws")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=1)
    parser.add_argument(
        "--min-ratio", type=float, default=MIN_RATIO, help="smallest share of its channels a group keeps"
    )
    parser.add_argument("--proposals", type=int, default=1, help="latency: plans ranked by short fine-tunes")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--test-samples", type=int, default=None)
    parser.add_argument("--samples", type=int, default=300, help="layer configs measured for the predictor")
    parser.add_argument(
        "--thinned",
        default="0.75,0.5,0.25",
        help="shares of the copies timed whole for the calibration; more where the weights outgrow the cache",
    )
    parser.add_argument(
        "--passes", type=int, default=3, help="sweeps measuring each layer and model (the fastest counts)"
    )
    parser.add_argument(
        "--revalidate",
        type=int,
        default=0,
        help="validate every output under --work again this many times, in turns, after the runs; "
        "each model's fastest latency counts, against the dense model's fastest of them all",
    )
    parser.add_argument("--work", type=Path, default=Path("bench-prune"))
    parser.add_argument("--results", type=Path, default=Path("docs/results/prune/results"))
    parser.add_argument("--cpu-lock", type=Path, help="lock file: exclusive while timing, shared while training")
    args = parser.parse_args()
    timing = partial(cpu_lock, args.cpu_lock, exclusive=True)
    training = partial(cpu_lock, args.cpu_lock, exclusive=False)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    device = load_registry(local_registry(work, args.passes)).get("local")
    policy = parse_policy("default")
    tables_dir, cache = work / "tables", work / "cache"
    data = load_data(args.dataset, 128, args.train_samples, args.test_samples)

    model = pipeline.build(args.model, data).eval()
    calibration_models = _calibration_models(args.model, data, [float(s) for s in args.thinned.split(",")])
    with timing():
        measure_models(device, calibration_models, policy, tables_dir, cache)
        collect(device, model_space(model, data.input_shape, args.samples), policy, tables_dir, cache)
        measure_models(device, calibration_models, policy, tables_dir, cache, force=True)
    with training():
        models = tables.read_models(tables_dir, "local")
        copies = models[models.model.isin({case.name for case in calibration_models})]
        predictor = Predictor.fit(tables.read(tables_dir, "local"), "local", "default", models=copies)
    calibration = predictor.meta["calibration"] or {}
    print(
        f"predictor: {predictor.meta['rows']} layer rows; whole-model calibration "
        f"scale {calibration.get('scale', 1):.3f}, offset {calibration.get('offset_ms', 0):.4f} ms, "
        f"spill {calibration.get('spill_ms_per_mib', 0):.4f} ms/MiB from {calibration.get('spill_from_mib')} "
        f"to {calibration.get('spill_to_mib')} MiB, "
        f"held-out error {calibration.get('held_out_mape', float('nan')):.1%}"
    )

    with training():
        dense = pipeline.dense_baseline(args.model, data, args.dense_epochs, 0, cache)
    name = args.model.rpartition(":")[2] or args.model
    validations: dict[Path, list[dict]] = {}
    about: dict[Path, dict] = {}
    for spec in filter(None, args.methods.split(",")):
        method, _, round_to = spec.partition(":")
        rounds = args.board_rounds if method in args.board_methods.split(",") else 0
        board = Board(device, tables_dir, cache, rounds) if rounds else None
        budgets = args.flops_budgets if method == "flops" and args.flops_budgets else args.budgets
        for budget in [float(b) for b in budgets.split(",")]:
            settings = pipeline.Settings(
                method=method,
                budget=budget,
                epochs=args.epochs,
                round_to=int(round_to or 0),
                dense_epochs=args.dense_epochs,
                search_epochs=args.search_epochs,
                min_ratio=args.min_ratio,
                proposals=args.proposals if method == "latency" else 1,
            )
            label = (
                method
                + (f"-r{round_to}" if round_to else "")
                + (f"-p{settings.proposals}" if settings.proposals > 1 else "")
                + ("-board" if board else "")
                + (f"-min{args.min_ratio:g}" if args.min_ratio != MIN_RATIO else "")
            )
            out = work / "pruned" / f"{name}-{label}-{budget:g}"
            if not (out / "plan.json").is_file():
                try:
                    with timing() if board else training():  # a board times plans between its fine-tunes
                        pipeline.run(args.model, data, predictor, settings, out, cache, dense=dense, board=board)
                except PruneError as exc:
                    print(f"{label} at {budget:g}: {exc}")
                    continue
            record = json.loads((out / "plan.json").read_text())
            about[out] = {
                "method": label,
                "macs": record["macs"],
                "dense_macs": record["dense_macs"],
                "board": record.get("board"),
            }
            with timing():
                validations[out] = [validate(device, out, tables_dir, cache)]
            print(_line({**validations[out][0], **about[out]}), flush=True)
    if args.revalidate:
        for r in _read(args.results / f"{name}@{args.dataset.partition(':')[0]}.json"):
            out = Path(r["model"])
            if out not in validations and (out / "plan.json").is_file():
                about[out], validations[out] = {k: r[k] for k in ("method", "macs", "dense_macs", "board")}, []
    for turn in range(args.revalidate):
        print(f"validating every output again: turn {turn + 1} of {args.revalidate}", flush=True)
        for out, reports in validations.items():
            with timing():
                reports.append(validate(device, out, tables_dir, cache))
    dense_ms = (
        min((r["dense_ms"] for reports in validations.values() for r in reports if r["speedup"]), default=None)
        if args.revalidate
        else None
    )
    path = args.results / f"{name}@{args.dataset.partition(':')[0]}.json"
    results = _merged(
        path,
        [{**_fastest_of_run(reports, dense_ms), **about[out]} for out, reports in validations.items()],
        {"model": args.model, "dataset": args.dataset, **provenance()},
    )
    _print_table(results)
    print(f"results → {path}")


def _calibration_models(spec: str, data, shares: list[float]) -> list[ModelCase]:
    """The dense model and copies with every group thinned to each of ``shares``, for the whole-model
    calibration (as ``hwloop measure --thinned`` times them)."""
    dense = ModelCase(spec, pipeline.build(spec, data).eval(), data.input_shape)
    return [dense, *thinned_cases(dense, shares)]


def _fastest_of_run(reports: list[dict], dense_ms: float | None) -> dict:
    """One output's validations as one report: its fastest measured latency against ``dense_ms``,
    the dense model's fastest over every validation of the run (the same model each time), so a
    slow spell during one validation does not decide a speed-up. Without ``dense_ms`` (no
    revalidation) the first validation is kept as it is, its speed-up against the dense model timed
    beside it; a failed validation is kept as it is."""
    failed = [r for r in reports if not r["speedup"]]
    if failed or dense_ms is None:
        return (failed or reports)[0]
    fastest = min(reports, key=lambda r: r["measured_ms"])
    return judged({**fastest, "dense_ms": dense_ms, "validations": len(reports)}, [])


def _line(r: dict) -> str:
    speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
    predicted = f"{r['predicted_speedup']:.2f}x" if r.get("predicted_speedup") else "-"
    error = f"{r['predicted_error']:+.1%}" if r["predicted_error"] is not None else "-"
    return (
        f"| {r['method']} | {r['budget']:g} | {r['accuracy']:.2%} | {r['predicted_ms']:.3f} | "
        f"{r['measured_ms']:.3f} | {error} | {speedup} | {predicted} | {r['dense_macs'] / r['macs']:.2f}x "
        f"| {_timed(r['board'])} |" + ("" if r["ok"] else " failed: " + "; ".join(r["failures"]))
    )


def _timed(board: dict | None) -> str:
    """How the plan was checked on the device before fine-tuning: plans timed, and the chosen one's
    measured share of the dense latency beside its budget."""
    if not board:
        return "-"
    r = board["rounds"][board["chosen"]]
    return (
        f"{len(board['rounds'])}: {r['measured_ms'] / r['dense_ms']:.2f} of dense for "
        f"{r['goal_ms'] / r['dense_ms']:.2f}" + ("" if board["met"] else " (missed)")
    )


def _merged(path: Path, results: list[dict], about: dict) -> list[dict]:
    """``results`` with the earlier runs' results of other outputs (so a run of a few methods or
    budgets completes the table), written back to ``path`` with ``about`` (the run's model, dataset,
    machine, commit and command), ordered by method and budget."""
    earlier = _read(path)
    ran = {r["model"] for r in results}
    merged = sorted([r for r in earlier if r["model"] not in ran] + results, key=lambda r: (r["method"], r["budget"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**about, "results": merged}, indent=1) + "\n")
    return merged


def _read(path: Path) -> list[dict]:
    return json.loads(path.read_text())["results"] if path.is_file() else []


def _print_table(results: list[dict]) -> None:
    if not results:
        return
    first = results[0]
    print(
        f"\ndense: accuracy {first['dense_accuracy']:.2%}, measured {first['dense_ms']:.3f} ms, "
        f"predicted {first['dense_predicted_ms']:.3f} ms\n"
    )
    print(
        "| method | budget | accuracy | predicted ms | measured ms | predicted vs measured | measured speed-up "
        "| predicted speed-up | MACs reduction | plans timed before fine-tuning |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_line(r))


if __name__ == "__main__":
    main()
