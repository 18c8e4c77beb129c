"""``hwloop fit``, ``evaluate``, ``predict`` and ``report``: the per-device latency predictor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import JsonOpt, PredictorsOpt, TablesOpt, app, err, fail, out, parse_shape, read_table

DeviceOpt = Annotated[
    str, typer.Option("--device", "-d", help="Device name (its table and predictor are keyed by it).")
]


def _load(device: str, predictors: Path, schedule: str | None = None):
    from ..predictor import Predictor, PredictorError

    try:
        return Predictor.load(device, predictors, schedule)
    except PredictorError as exc:
        fail(str(exc))


def _read_any_table(path: Path):
    """A table folder (``tables/<device>``) or a single Parquet file."""
    import pandas as pd

    from .. import tables as tables_mod

    if path.is_dir():
        if not tables_mod.parts(path.parent, path.name):
            fail(f"{path}: no part-*.parquet files (a table folder is tables/<device>)")
        return read_table(path.parent, path.name)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        fail(f"{path}: not a readable Parquet table ({exc})")
    missing = [c for c in tables_mod.COLUMNS if c not in frame.columns and c not in tables_mod.LATER]
    if missing:
        fail(f"{path}: not an hwloop table (missing columns: {', '.join(missing[:5])})")
    return frame


def _scores_table(title: str, rows: dict[str, dict]) -> Table:
    table = Table(title=title)
    table.add_column("", no_wrap=True)
    for name in ("rows", "±5%", "±10%", "±15%", "RMSE ms", "MAPE", "Spearman"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, s in rows.items():
        rho = f"{s['spearman']:.3f}" if s.get("spearman") is not None else "-"
        table.add_row(
            name,
            str(s.get("rows", "")),
            *(f"{100 * s[f'within_{b}']:.1f}%" for b in (5, 10, 15)),
            f"{s['rmse_ms']:.3g}" if "rmse_ms" in s else "-",
            f"{100 * s['mape']:.1f}%",
            rho,
        )
    return table


def _print_report(title: str, report: dict) -> None:
    rows = {"all": report, **{f"  {op}": s for op, s in report["ops"].items()}}
    noise = report.get("noise") or {}
    if noise.get("mape") is not None:
        rows["noise: repeats"] = noise
    if noise.get("passes"):
        rows["noise: passes"] = noise["passes"]
    out.print(_scores_table(title, rows))


@app.command()
def fit(
    device: DeviceOpt,
    tables: TablesOpt = Path("tables"),
    predictors: PredictorsOpt = Path("predictors"),
    schedule: Annotated[str, typer.Option(help="Schedule policy whose rows train the predictor.")] = "default",
    protocol: Annotated[
        Optional[str], typer.Option(help="protocol_id to train on, when the table holds rows of several protocols.")
    ] = None,
    accept_noisy: Annotated[
        bool,
        typer.Option(
            "--accept-noisy", help="Fit even on a table whose trials disagree too often (see `hwloop tables show`)."
        ),
    ] = False,
    sources: Annotated[
        Optional[list[str]],
        typer.Option(
            "--from",
            help="A device already measured whose saved predictor (under --predictors) the new device's few "
            "rows correct: a few-shot predictor. Repeat it for several; each source's transfer and, from 10 "
            "rows on, the rows' own trees on its work model are scored by five folds and the best is kept.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a device's latency predictor on its table and save it under --predictors/<device>/.

    Only quiet rows of one schedule policy and protocol are used. A table whose measurements'
    independent trials agree within ±10 % for fewer than 95 % of them (and more than one) is
    refused: the device was too noisy to learn from (--accept-noisy fits all the same). Held-out
    scores (random configs, unseen channel counts, unseen shapes, sizes between measured ones) are
    printed and kept in predictor.json; when the device has measured whole models, the whole-model
    calibration is fitted too. With --from, a new device needs only a few measured configs
    (`hwloop collect --adaptive --budget 20 --from SOURCE` chooses them): the source's predictor,
    retargeted to the new device's vector width, has its work model scaled and refitted per path of
    the rules on them and is corrected by a few trees, unless the rows' own trees on that work model
    predict them better (five folds, from 10 rows); a handful of whole models timed on the new device
    scale the source's calibration.
    Examples:

      hwloop fit --device local

      hwloop fit --device pi5 --from pi4
    """
    from .. import tables as tables_mod
    from ..predictor import Predictor, PredictorError
    from ..trust import warning

    frame = read_table(tables, device)
    try:
        models = tables_mod.read_models(tables, device)
    except tables_mod.TableError as exc:
        fail(str(exc))
    if device in (sources or []):
        fail(f"--from {device}: a device cannot be its own source")
    known = [_load(name, predictors, schedule) for name in dict.fromkeys(sources or [])]
    with err.status(
        f"fitting {device}'s predictor on its {schedule!r} rows"
        + (f", from {', '.join(s.device for s in known)}'s" if known else "")
    ):
        try:
            if known:
                from ..predictor.fewshot import fit as fit_fewshot

                predictor = fit_fewshot(
                    frame, device, known, schedule, protocol, source=str(tables / device), models=models
                )
            else:
                predictor = Predictor.fit(frame, device, schedule, protocol, source=str(tables / device), models=models)
        except PredictorError as exc:
            fail(str(exc))
    if (why := warning(predictor.meta["trust"])) and not accept_noisy:
        fail(f"{tables / device}: {why}; nothing saved (--accept-noisy fits all the same)")
    directory = predictor.save(predictors)
    calibration = predictor.meta["calibration"]
    record = {
        "device": device,
        "schedule": schedule,
        "protocol_id": predictor.protocol_id,
        "rows": predictor.meta["rows"],
        "predictor": str(directory),
        "metrics": predictor.meta["metrics"],
        "trust": predictor.meta["trust"],
        "calibration": calibration,
        "transfer": predictor.meta.get("transfer"),
    }
    if as_json:
        out.print_json(json.dumps(record))
        return
    if record["metrics"]:
        out.print(_scores_table(f"{device} · {schedule} · held-out rows", record["metrics"]))
        for split, scores in record["metrics"].items():
            if unlearnt := scores.get("unlearnt_paths"):
                out.print(
                    f"{split}: {sum(unlearnt.values())} of its {scores['rows']} held-out rows take a path of the "
                    f"rules that none of its training rows took ({_paths(unlearnt)}): a predictor can only "
                    "extrapolate there, so the table needs rows of every path its layers take",
                    highlight=False,
                )
    if calibration:
        spill = calibration.get("spill_from_mib")
        models_table = Table(
            "model",
            "measured ms",
            "layers ms",
            "weights MiB",
            "predicted ms",
            "error",
            title=f"whole models (scale {calibration['scale']:.3f}, rest {calibration['offset_ms']:.3f} ms"
            + (
                ""
                if spill is None
                else f", weights read from memory from {spill:.1f} MiB, all of them from "
                f"{calibration['spill_to_mib']:.1f} MiB, at {1000 * calibration['spill_ms_per_mib']:.1f} µs per MiB"
            )
            + "; each predicted by a calibration without it)",
        )
        for case in calibration["cases"]:
            weights = case.get("weights_mib")
            models_table.add_row(
                case["model"],
                f"{case['measured_ms']:.3f}",
                f"{case['layers_ms']:.3f}",
                "-" if weights is None else f"{weights:.1f}",
                f"{case['predicted_ms']:.3f}",
                f"{100 * case['error']:+.1f} %",
            )
        out.print(models_table)
        if calibration["held_out_mape"] is not None:
            out.print(f"held out: {calibration['held_out_mape']:.1%} off on average")
        if calibration.get("method", "own") != "own":
            out.print(f"calibration: the {calibration['method']}")
    else:
        out.print("no whole-model measurements to calibrate on (`hwloop measure` makes them)")
    trust = record["trust"]
    if trust["measured"]:
        out.print(
            f"the table's trials agree within ±5 % for {trust['within_5']:.1%} of its measurements, within "
            f"±10 % for {trust['within_10']:.1%}; {trust['quiet']:.1%} were timed on a quiet device"
        )
    transfer = record["transfer"]
    if transfer and transfer["method"] == "transfer":
        out.print(f"few-shot: {transfer['source']}'s predictor, corrected on {device}'s rows")
    elif transfer:
        out.print(
            f"few-shot: trees of {device}'s own over {transfer['source']}'s work model refitted to its rows "
            "(they predict its rows better than a transfer of the source's trees, by five folds)"
        )
    out.print(f"trained on {record['rows']} rows → {directory}")


@app.command()
def evaluate(
    device: DeviceOpt,
    predictors: PredictorsOpt = Path("predictors"),
    table: Annotated[
        Optional[Path],
        typer.Option(
            "--table",
            help="Table to score on: a table folder (tables/<device>) or a Parquet file; "
            "default: the device's own table under --tables.",
            show_default=False,
        ),
    ] = None,
    tables: TablesOpt = Path("tables"),
    as_json: JsonOpt = False,
) -> None:
    """Score a device's predictor on a table: within ±5/10/15 %, RMSE, MAPE, Spearman, per op family.

    The scores are printed beside the table's noise floor. Only rows of the predictor's schedule
    policy and protocol are scored; a table without any is refused. A table measured later or
    elsewhere makes an honest test; on the table it was trained on, `hwloop fit`'s held-out scores
    are the honest ones. Example:

      hwloop evaluate --device local --table new-tables/local --json
    """
    from ..predictor import PredictorError
    from ..predictor.evaluation import evaluate as score

    predictor = _load(device, predictors)
    path = table if table is not None else tables / device
    frame = _read_any_table(path) if table is not None else read_table(tables, device)
    try:
        report = score(predictor, frame, str(path))
    except PredictorError as exc:
        fail(str(exc))
    report["table"] = str(path)
    if as_json:
        out.print_json(json.dumps(report))
        return
    _print_report(f"{device} · {predictor.schedule} predictor on {path}", report)
    out.print(
        "noise: single repeats against their row's median and, for configs measured in several passes, "
        "the slower passes against the fastest; a predictor cannot do better"
    )
    if report["rows_ignored"]:
        out.print(f"{report['rows_ignored']} rows of other schedules, protocols or failed measurements not scored")


def _paths(counts: dict[str, int]) -> str:
    """``{path: rows}`` as a phrase: "spatial: 12, width: 3"."""
    return ", ".join(f"{path}: {n}" for path, n in counts.items())


def _parse_config(text: str):
    from ..layers import LayerConfig

    try:
        return LayerConfig.from_id(text)
    except ValueError as exc:
        fail(f"layer {text!r}: {exc}")


@app.command()
def predict(
    device: DeviceOpt,
    layers: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Layer config ids, e.g. conv2d:1x64x56x56:o48:k3s1p1g1:float32 or linear:1x512:o10.",
            show_default=False,
        ),
    ] = None,
    space: Annotated[
        Optional[Path], typer.Option("--space", "-s", help="YAML space file: predict each of its layers.")
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", help="Built-in model or path/to/file.py:callable: predict its layers and the whole model."
        ),
    ] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="Model input shape, e.g. 1,3,32,32.")] = None,
    predictors: PredictorsOpt = Path("predictors"),
    as_json: JsonOpt = False,
) -> None:
    """Predict layer latencies (ms) on a device without touching it, from its saved predictor.

    Examples:

      hwloop predict -d local conv2d:1x64x56x56:o48:k3s1p1g1:float32 conv2d:1x64x56x56:o64:k3s1p1g1:float32

      hwloop predict -d local --model resnet20
    """
    from ..predictor.features import arrays
    from ..predictor.rules import path_counts

    if sum(x is not None and x != [] for x in (layers, space, model)) != 1:
        fail("give layer ids, or --space, or --model")
    predictor = _load(device, predictors)
    whole = None
    if layers:
        configs = [_parse_config(text) for text in layers]
    elif space is not None:
        from ..space import SpaceError, load_space

        try:
            configs = load_space(space)
        except SpaceError as exc:
            fail(str(exc))
    else:
        from ..models import ModelError, load_model
        from ..space import SpaceError
        from ..tracing import trace_layers

        try:
            module, shape = load_model(model, parse_shape(input_shape))
            configs = [traced.config for traced in trace_layers(module, shape)]
        except (ModelError, SpaceError) as exc:
            fail(str(exc))
        whole = predictor.predict_model(configs)
    latencies = predictor.predict(configs)
    unlearnt = predictor.model.unlearnt_paths(arrays(configs)).tolist()
    record = {
        "device": device,
        "schedule": predictor.schedule,
        "layers": [
            {"config_id": c.id, "latency_ms": float(ms), **({"unlearnt_path": path} if path else {})}
            for c, ms, path in zip(configs, latencies, unlearnt)
        ],
    }
    if whole is not None:
        record.update(
            model=model,
            layers_ms=float(latencies.sum()),
            model_ms=whole,
            calibrated=bool(predictor.meta.get("calibration")),
        )
    if as_json:
        out.print_json(json.dumps(record))
        return
    table = Table("layer", "predicted ms", title=f"{device} · {predictor.schedule}")
    for row in record["layers"]:
        table.add_row(row["config_id"], f"{row['latency_ms']:.4f}")
    out.print(table)
    if any(unlearnt):
        counts = path_counts(unlearnt)
        first = next(c for c, path in zip(configs, unlearnt) if path)
        command = f"hwloop collect -d {device} " + (
            f"-m {model}" + (f" --input-shape {input_shape}" if input_shape else "")
            if model is not None
            else "--space SPACE.yaml"
        )
        err.print(
            f"[yellow]note:[/] {sum(counts.values())} of the {len(configs)} layers take a path of the rules that "
            f"no row of {device}'s table took ({_paths(counts)}), such as {first.id}: the predictor "
            f"extrapolates there; measure such layers with `{command}`",
            highlight=False,
        )
    if whole is not None:
        note = "" if record["calibrated"] else " (uncalibrated: no whole-model measurements yet)"
        out.print(f"{model}: layers {record['layers_ms']:.3f} ms, whole model {whole:.3f} ms{note}")


@app.command()
def report(
    device: DeviceOpt,
    tables: TablesOpt = Path("tables"),
    predictors: PredictorsOpt = Path("predictors"),
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Folder for the page and plots (default: reports/<device>).", show_default=False),
    ] = None,
) -> None:
    """Plot a device's predictor against its table as an HTML page.

    The page has predicted-vs-measured (±10 % band), latency-vs-out-channels staircases with the
    predictor's line, learning curves and, for rows measured in trials, how far the trials repeat.

      hwloop report --device local
    """
    from ..predictor import PredictorError
    from ..predictor.report import write_report
    from ..predictor.selection import select

    predictor = _load(device, predictors)
    try:
        chosen = select(
            read_table(tables, device), str(tables / device), predictor.schedule, predictor.protocol_id, device
        )
    except PredictorError as exc:
        fail(str(exc))
    with err.status(f"plotting {device}'s predictor on {len(chosen.rows)} rows"):
        index = write_report(predictor, chosen, out_dir or Path("reports") / device)
    out.print(f"report → {index}")
