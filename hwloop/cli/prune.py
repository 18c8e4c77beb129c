"""``hwloop prune`` and ``hwloop validate``: prune a model for a device's predicted latency, then
measure the pruned model against the dense one on the device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..paths import cache_dir as default_cache_dir
from ..prune import MIN_RATIO
from .app import (
    CacheOpt,
    JsonOpt,
    PredictorsOpt,
    RegistryOpt,
    TablesOpt,
    app,
    err,
    fail,
    get_device,
    out,
    parse_shape,
    progress_bar,
)

DRIFT_TOLERANCE = 0.05  # dense model's prediction error beyond which validate says the device ran differently


@app.command()
def prune(
    device: Annotated[
        str,
        typer.Option(
            "--device",
            "-d",
            help="Device whose predicted latency is the cost (and, with --board-rounds, where plans are timed).",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Built-in model (resnet20, resnet56, resnet18, mobilenetv2; built for the dataset's "
            "input channels and classes), torchvision:NAME (a torchvision classifier, random "
            "weights, built for the dataset's classes; 3-channel input) or path/to/file.py:callable "
            "returning an nn.Module that takes the dataset's images (Fashion-MNIST: 1x28x28, "
            "CIFAR-10: 3x32x32, or --input-shape).",
        ),
    ],
    budget: Annotated[
        str,
        typer.Option(
            help="Latency budget: a fraction of the dense model's predicted latency (0.5 or 50%), "
            "or milliseconds with the unit (3.2ms)."
        ),
    ] = "0.5",
    method: Annotated[
        str,
        typer.Option(
            help="latency (allocator under the predicted latency), afcp (gates with residual replacement), "
            "lws (layer-wise rule search with distillation), flops (global ranking under a MACs budget), "
            "uniform (one ratio everywhere)."
        ),
    ] = "latency",
    dataset: Annotated[
        str,
        typer.Option(
            help="fashion-mnist, cifar10:PATH (the CIFAR-10 binary version), folder:PATH (PATH/train/CLASS/IMAGE and "
            "PATH/val/CLASS/IMAGE, read with Pillow) or npz:PATH (arrays x_train, y_train, x_test, y_test)."
        ),
    ] = "fashion-mnist",
    input_shape: Annotated[
        Optional[str],
        typer.Option(
            help="The model's input, N,C,H,W such as 1,3,64,64: the dataset's images are resized to HxW and grey ones "
            "repeated to 3 channels (colour ones averaged to 1). With --dry-run no data is read.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after pruning (distilled from the dense model).")] = 2,
    dense_epochs: Annotated[int, typer.Option(help="Epochs of the dense baseline (trained once, then cached).")] = 5,
    lr: Annotated[float, typer.Option(help="Learning rate of the fine-tuning (SGD, cosine schedule).")] = 0.01,
    dense_lr: Annotated[
        float,
        typer.Option(
            help="Learning rate of the dense baseline. Lower it (0.01) for a network that does not learn at the "
            "default: prune warns when the dense model does no better than guessing the commonest class."
        ),
    ] = 0.05,
    search_epochs: Annotated[int, typer.Option(help="Epochs of gate or rule training (afcp, lws).")] = 1,
    criterion: Annotated[
        str,
        typer.Option(help="Channel importance for latency, flops, uniform: l1, bn_scale, taylor, geometric_median."),
    ] = "l1",
    train_samples: Annotated[Optional[int], typer.Option(help="Use only the first N training images.")] = None,
    test_samples: Annotated[Optional[int], typer.Option(help="Use only the first N test images.")] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of training and sampling.")] = 0,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Output folder (default: pruned/MODEL-METHOD-BUDGET).", show_default=False),
    ] = None,
    round_to: Annotated[
        int,
        typer.Option(
            help="latency, flops, uniform: keep channel counts at multiples of N in groups whose size is one, "
            "as Torch-Pruning's round_to (1: any count, Torch-Pruning's default). 0: the device's vector "
            "width for flops and uniform, any count for latency (its cost prices ragged counts)."
        ),
    ] = 0,
    min_ratio: Annotated[
        float,
        typer.Option(
            help="Smallest share of its channels any group keeps. A narrower group is a bottleneck that "
            "fine-tuning does not recover from (a ResNet stage's residual stream feeds every block of the "
            "stage), and importance scored on the dense model does not see it."
        ),
    ] = MIN_RATIO,
    proposals: Annotated[
        int,
        typer.Option(
            help="latency: propose N plans at the budget (whole groups' importance scaled at random) and rank them "
            "by short fine-tunes, as NetAdapt ranks its proposals: each is fine-tuned one pass over up to 200 "
            "training batches and scored on training images held out of it, the better half another pass, and "
            "so on until two or three remain; the best of those is kept (1: the allocator's plan alone)."
        ),
    ] = 1,
    board_rounds: Annotated[
        int,
        typer.Option(
            help="Time each plan on the device before fine-tuning (dense and planned model compiled whole, "
            "side by side) and re-plan, up to N plans, until the measured latency meets the budget "
            "(0: trust the predictor). Needs the device in the registry."
        ),
    ] = 0,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Only check: find the channel groups, prune every group to half and run the model; no training."
        ),
    ] = False,
    predictors: PredictorsOpt = Path("predictors"),
    tables: TablesOpt = Path("tables"),
    registry: RegistryOpt = None,
    cache: CacheOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Prune a model's channels to a budget of the device's [bold]predicted latency[/], then fine-tune it.

    Fine-tuning distils from the dense model; the output folder holds weights, plan and an
    ExportedProgram.

    The dense baseline is trained first and cached. With --board-rounds, plans are timed on the device
    before fine-tuning (rows go to the device's model table in --tables). Examples:

      hwloop prune --device local --model resnet20 --budget 0.5

      hwloop prune --device local --model resnet20 --budget 0.5 --board-rounds 3

      hwloop prune --device local --model resnet20 --budget 0.4 --proposals 8 --epochs 3

      hwloop prune -d jetson -m resnet56 --budget 3.2ms --method afcp --dataset cifar10:~/data/cifar --epochs 10

      hwloop prune -d local -m torchvision:mobilenet_v3_large --input-shape 1,3,64,64 --train-samples 10000

      hwloop prune -d local -m torchvision:resnet50 --dataset folder:~/data/parts --input-shape 1,3,96,96

      hwloop prune -d local -m torchvision:shufflenet_v2_x1_0 --input-shape 1,3,64,64 --dry-run
    """
    from ..models import ModelError
    from ..predictor import Predictor, PredictorError
    from ..prune import pipeline
    from ..prune.board import Board
    from ..prune.data import DataError, load_data
    from ..prune.groups import PruneError
    from ..prune.importance import CRITERIA
    from ..schedules import PolicyError
    from ..transports import TransportError

    if method not in pipeline.METHODS:
        fail(f"--method {method!r}: expected one of {', '.join(pipeline.METHODS)}")
    if criterion not in CRITERIA:
        fail(f"--criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    if board_rounds < 0 or round_to < 0:
        fail("--board-rounds and --round-to must be 0 or more")
    if proposals < 1 or (proposals > 1 and method != "latency"):
        fail(f"--proposals {proposals}: expected 1 or more, and more than 1 only with --method latency")
    if not 0 < min_ratio <= 1:
        fail(f"--min-ratio {min_ratio}: expected a share of a group's channels in (0, 1]")
    cache_root = cache or default_cache_dir()
    shape = parse_shape(input_shape)
    if dry_run and shape is not None:
        _dry_run(model, shape, None)
        return
    board = (
        Board(get_device(device, registry), tables, cache_root, board_rounds) if board_rounds and not dry_run else None
    )
    try:
        predictor = None if dry_run else Predictor.load(device, predictors)
        data = load_data(dataset, batch_size, train_samples, test_samples, seed, shape)
    except (PredictorError, DataError) as exc:
        fail(str(exc))
    if dry_run:
        _dry_run(model, data.input_shape, data.num_classes)
        return
    _check_coverage(model, data, predictor, tables, as_json)
    out_dir = (
        out_dir or Path("pruned") / f"{Path(model.rpartition(':')[2] or model).name}-{method}-{budget.rstrip('%')}"
    )
    settings = pipeline.Settings(
        method=method,
        budget=budget,
        epochs=epochs,
        dense_epochs=dense_epochs,
        lr=lr,
        dense_lr=dense_lr,
        search_epochs=search_epochs,
        criterion=criterion,
        seed=seed,
        round_to=round_to,
        min_ratio=min_ratio,
        proposals=proposals,
    )
    progress = progress_bar(disable=as_json)
    try:
        with progress:
            result = pipeline.run(
                model, data, predictor, settings, out_dir, cache_root / "prune", progress, board=board
            )
    except (PruneError, ModelError, PolicyError, TransportError) as exc:
        fail(str(exc))
    record = {**result.record, "out": str(out_dir)}
    if as_json:
        out.print_json(json.dumps({k: v for k, v in record.items() if k != "groups"}))
        return
    _summary(record)
    out.print(
        f"wrote {', '.join(p.name for p in result.files)} → {out_dir}\n"
        f"measure it on the device: hwloop validate --device {device} --model {out_dir}"
    )


def _summary(record: dict) -> None:
    from ..prune.train import learnt

    plan = Table("group", "channels", title="channels kept per group")
    for name, counts in record["groups"].items():
        if counts["kept"] != counts["dense"]:
            plan.add_row(name, f"{counts['dense']} → {counts['kept']}")
    out.print(plan)
    if "proposals" in record:
        _proposals_table(record)
    if "board" in record:
        _board_table(record["board"])
    table = Table(
        "",
        "accuracy",
        "predicted ms",
        "MMACs",
        title=f"{record['model']} · {record['method']} · "
        f"budget {record['budget']} ({record['target_ms']:.3f} ms) on {record['device']}",
    )
    table.add_row(
        "dense",
        f"{record['dense_accuracy']:.2%}",
        f"{record['dense_predicted_ms']:.3f}",
        f"{record['dense_macs'] / 1e6:.1f}",
    )
    table.add_row("pruned", f"{record['accuracy']:.2%}", f"{record['predicted_ms']:.3f}", f"{record['macs'] / 1e6:.1f}")
    table.add_row(
        "ratio",
        f"{record['accuracy'] - record['dense_accuracy']:+.2%}",
        f"{record['dense_predicted_ms'] / record['predicted_ms']:.2f}x faster",
        f"{record['dense_macs'] / record['macs']:.2f}x fewer",
    )
    out.print(table)
    if not learnt(record["dense_accuracy"], record["guess_accuracy"]):
        err.print(
            f"[yellow]the dense model reached {record['dense_accuracy']:.2%}, no better than always guessing the "
            f"commonest class ({record['guess_accuracy']:.2%}):[/] it did not learn in {record['dense_epochs']} "
            f"epochs at --dense-lr {record['dense_lr']:g}, so the accuracies above say nothing. Lower --dense-lr "
            "(e.g. 0.01) or raise --dense-epochs.",
            highlight=False,
        )


def _proposals_table(record: dict) -> None:
    table = Table(
        "proposal",
        "held-out accuracy",
        "after passes",
        "predicted ms",
        "groups cut (kept of dense)",
        title="plans proposed at the budget, ranked by successive halving of short fine-tunes",
    )
    for index, p in enumerate(record["proposals"]):
        cut = [
            f"{name} {kept}/{record['groups'][name]['dense']}"
            for name, kept in p["plan"].items()
            if kept < record["groups"][name]["dense"]
        ]
        table.add_row(
            str(index + 1) + (" (chosen)" if index == 0 else ""),
            f"{p['accuracy']:.2%}",
            str(p["passes"]),
            f"{p['predicted_ms']:.4f}",
            ", ".join(cut),
        )
    out.print(table)


def _board_table(board: dict) -> None:
    table = Table(
        "plan",
        "predicted target ms",
        "predicted ms",
        "measured ms",
        "dense ms",
        "budget ms",
        "",
        title=f"plans timed on {board['device']}",
    )
    for index, r in enumerate(board["rounds"]):
        table.add_row(
            str(index + 1),
            f"{r['target_ms']:.4f}",
            f"{r['predicted_ms']:.4f}",
            f"{r['measured_ms']:.4f}",
            f"{r['dense_ms']:.4f}",
            f"{r['goal_ms']:.4f}",
            " ".join(
                filter(
                    None,
                    [
                        "chosen" if index == board["chosen"] else "",
                        "" if r["measured_ms"] <= r["goal_ms"] else "(over)",
                        "(timed twice)" if r.get("timings", 1) > 1 else "",
                    ],
                )
            ),
        )
    out.print(table)
    if not board["met"]:
        out.print("[bold yellow]no plan met the budget as measured[/]; the one that missed it least was kept")


DRY_RUN_TOLERANCE = 1e-4  # relative difference of the pruned and the masked dense output a right grouping stays under


def _dry_run(spec: str, shape: tuple[int, ...], num_classes: int | None) -> None:
    from ..models import ModelError, load_model, model_file
    from ..prune.dryrun import dry_run
    from ..prune.groups import PruneError

    try:
        model, shape = load_model(spec, shape, None if model_file(spec) else num_classes)
        checked = dry_run(model, shape)
    except (ModelError, PruneError) as exc:
        fail(str(exc))
    groups = checked.groups
    table = Table(
        "group",
        "channels",
        "in steps of",
        "sets out of",
        "sets in of",
        title=f"{spec}: {len(groups.groups)} channel groups",
    )
    for g in groups.groups:
        table.add_row(
            g.name, str(g.size), str(g.unit), ", ".join(g.producers + list(g.depthwise)), ", ".join(g.consumers)
        )
    out.print(table)
    for skipped in groups.skipped:
        out.print(
            f"kept dense: {escape(skipped.name)} ({skipped.size} channels): {escape(skipped.reason)}", highlight=False
        )
    if not checked.shapes_hold:
        fail(
            f"pruned every group to about half: the output is {checked.pruned_shape}, the dense model's "
            f"{checked.dense_shape}"
        )
    verdict = (
        "the pruned model computes what the dense one does without those channels"
        if checked.difference <= DRY_RUN_TOLERANCE
        else "more than the dropped channels changed (layers that normalise across channels, such as LayerNorm, "
        "see them; a wrong grouping does too)"
    )
    out.print(
        f"pruned every group to about half: output {checked.pruned_shape} like the dense model's; against "
        f"the dense model with the same channels zeroed, relative difference {checked.difference:.1e}: {verdict}"
    )


def _check_coverage(spec: str, data, predictor, tables: Path, as_json: bool) -> None:
    """Refuse a model none of whose layer shapes the device's table holds (the predictor would
    extrapolate every layer); warn when some are missing. Both name the collect command."""
    from ..prune.coverage import uncovered
    from ..prune.groups import PruneError
    from ..prune.pipeline import build
    from ..space import SpaceError
    from ..tables import TableError, read
    from ..tracing import trace_layers

    try:
        layers = [t.config for t in trace_layers(build(spec, data), data.input_shape)]
        rows = read(tables, predictor.device)
    except (PruneError, SpaceError, TableError, OSError):
        return  # the run reports a model it cannot build; a missing table leaves the predictor's word
    if not len(rows) or not (rows.schedule == predictor.schedule).any():
        return  # no layer rows of the predictor's kind here (it was fitted on another table)
    missing, shapes = uncovered(layers, rows, predictor.schedule)
    if not missing:
        return
    command = f"hwloop collect -d {predictor.device} -m {spec} --input-shape {','.join(map(str, data.input_shape))}" + (
        "" if predictor.schedule.startswith("default") else f" --schedule {predictor.schedule}"
    )
    what = f"{len(missing)} of the {shapes} layer shapes of {spec} (input {data.input_shape})"
    if len(missing) == shapes:
        fail(
            f"{tables / predictor.device} holds none of the layer shapes of {spec} (input {data.input_shape}): "
            f"the predictor would guess every layer; measure them first: {command}"
        )
    if not as_json:
        err.print(
            f"[yellow]note:[/] {what} have no row in {tables / predictor.device} (such as {missing[0].id}): "
            f"the predictor extrapolates there; measure them with: {command}",
            highlight=False,
        )


@app.command()
def validate(
    device: Annotated[str, typer.Option("--device", "-d", help="Registered device to measure on.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Output folder of `hwloop prune`.")],
    tables: TablesOpt = Path("tables"),
    registry: RegistryOpt = None,
    cache: CacheOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Time a pruned model and its dense model end to end on the device; compare with the prediction.

    Both are compiled whole for the device and checked against torch first. Exits 1 when the pruned
    model is not faster.

      hwloop validate --device local --model pruned/resnet20-latency-0.5
    """
    from ..prune.groups import PruneError
    from ..prune.validate import validate as run_validate
    from ..schedules import PolicyError
    from ..transports import TransportError

    dev = get_device(device, registry)
    try:
        with err.status(f"{dev.name}: building and timing the dense and the pruned model"):
            report = run_validate(
                dev,
                model,
                tables,
                cache or default_cache_dir(),
                on_row=lambda row: err.print(f"{row['model']}: {row['status']}"),
            )
    except (PruneError, PolicyError, TransportError) as exc:
        fail(str(exc))
    if as_json:
        out.print_json(json.dumps(report))
    else:
        _validation_table(report)
    if not report["ok"]:
        raise typer.Exit(1)


def _validation_table(report: dict) -> None:
    def ms(value) -> str:
        return f"{value:.4f}" if value is not None else "-"

    table = Table(
        "",
        "measured ms",
        "predicted ms",
        "accuracy",
        title=f"{report['model']} on {report['device']} · {report['schedule']}",
    )
    table.add_row("dense", ms(report["dense_ms"]), ms(report["dense_predicted_ms"]), f"{report['dense_accuracy']:.2%}")
    table.add_row("pruned", ms(report["measured_ms"]), ms(report["predicted_ms"]), f"{report['accuracy']:.2%}")
    out.print(table)
    if report["speedup"] is not None:
        predicted = f" (predicted {report['predicted_speedup']:.2f}x)" if report["predicted_speedup"] else ""
        out.print(
            f"measured speed-up {report['speedup']:.2f}x{predicted}; "
            f"predicted latency off by {report['predicted_error']:+.1%}"
            + ("" if report["predicted_for"] == report["device"] else f" (predicted for {report['predicted_for']})")
        )
        drift = report["dense_predicted_error"]
        if drift is not None and abs(drift) > DRIFT_TOLERANCE:
            out.print(
                f"the dense model is predicted {drift:+.1%} off too: the device ran "
                f"{'faster' if drift > 0 else 'slower'} than when its tables were measured (clocks, load, "
                "heat); the speed-ups compare models timed side by side and move less with that"
            )
    for failure in report["failures"]:
        out.print(f"[bold red]failed:[/] {escape(failure)}", highlight=False)
