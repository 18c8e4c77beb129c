"""The latency predictor study: collect, fit, score on honest held-out splits, write the results.

    .venv/bin/pip install -e '.[bench]'    # LightGBM, one of the learners compared
    flock -x /work/cpu.lock .venv/bin/python bench/predictor.py --work /work/data/predictor2 \\
        --results docs/results/predictor/results
    .venv/bin/python bench/predictor_page.py docs/results/predictor    # the page, from the results

0. **build** (optional): every config compiled into ``--work/cache``, timing nothing, so that the
   collection that follows spends its exclusive time measuring.
1. **collect** (the built-in ``local`` device and its protocol: independent trials on fresh loads,
   busy trials dropped, see docs/measurement.md; ``default`` rules): for each space a table under
   ``--work/<space>/tables``; **repeat**: once every space is measured, a second collection of a
   random subset of each into ``--work/<space>/repeat`` (another process, minutes later): how well
   two collections of the same configs agree is the floor no predictor can beat. Nothing else
   should run meanwhile (hence the lock). The spaces: ``grid``, 3x3 and 1x1 convs at 14² and 28²
   on a grid of channel counts (in 8-88, out 8-92), with ``between``, a table of channel counts
   between the grid's and of an unseen 21² input, measured separately; the layer spaces of
   ResNet-20, MobileNetV2 and ResNet-18 at Fashion-MNIST's 1x28x28 input (the pruning benchmark's),
   with seeded random channel counts. Tables are kept, so a re-run measures only what is missing.
2. **score**: for each space, each learner is trained and scored on the same splits: a random
   quarter of the configs held out, every row with a held-out channel count held out (each drawn
   five times, the held-out rows of every draw scored together), every row of
   an input size between two measured ones held out (per op, kernel and stride), each such size
   held out alone (trained on the others), and for ``grid``
   the separately measured ``between`` table; the learning curve (random subsets of the training
   rows against the held-out random configs); per op family, latency range and channel alignment.
   *Steady* rows are those whose trials (or, in a table measured in several passes, passes) all
   lie within ±5 % of the row's latency. Results go to ``--results`` as JSON (one file per space,
   with the protocol its table was measured with, the commit and the command; plus
   ``machine.json``), which ``bench/predictor_page.py`` turns into the page. **agree** only updates them with how the
   second collections agree.

``--stages`` and ``--spaces`` run parts (e.g. builds under a shared lock, then a few spaces'
collections per exclusive lock, so that others' runs go in between)::

    flock -s /work/cpu.lock .venv/bin/python bench/predictor.py --work W --stages build
    flock -x /work/cpu.lock .venv/bin/python bench/predictor.py --work W --stages collect,repeat --spaces grid
    flock -s /work/cpu.lock .venv/bin/python bench/predictor.py --work W --stages score

``--quick`` measures a few dozen configs per space, to check the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hwloop import tables
from hwloop.collect import collect
from hwloop.layers import LayerConfig
from hwloop.models import load_model
from hwloop.predictor.evaluation import collections_agree
from hwloop.registry import LOCAL
from hwloop.schedules import parse_policy
from hwloop.targets import resolve
from hwloop.tracing import model_space

POLICY = parse_policy("default").name

INPUT = (1, 1, 28, 28)
REPEAT = 40  # configs of each space collected a second time


@dataclass(frozen=True)
class Space:
    name: str
    configs: list[LayerConfig]
    test: list[LayerConfig]  # measured in a table of its own (empty: the splits of the space's table only)


def grid(quick: bool) -> Space:
    """The grid: 3x3 and 1x1 convs, in 8-88, out 8-92, at 14² and 28²; ``between``: counts
    off the grid at those sizes and at 21²."""
    ins = (8, 40, 88) if quick else (8, 24, 40, 56, 72, 88)
    outs = (8, 44, 92) if quick else (8, 20, 32, 44, 56, 68, 80, 92)
    configs = [_conv(cin, cout, size, kernel) for kernel in (3, 1) for size in (14, 28) for cin in ins for cout in outs]
    rng = np.random.default_rng(0)
    test = []
    for kernel in (3, 1):
        for size in (14, 21, 28):
            for _ in range(4 if quick else 16):
                cin = int(rng.choice([c for c in range(9, 88) if c not in ins]))
                cout = int(rng.choice([c for c in range(9, 92) if c not in outs]))
                test.append(_conv(cin, cout, size, kernel))
    return Space("grid", configs, list(dict.fromkeys(test)))


def _conv(cin: int, cout: int, size: int, kernel: int) -> LayerConfig:
    return LayerConfig("conv2d", cin, cout, size, size, kernel=kernel, padding=kernel // 2)


def model(name: str, samples: int) -> Space:
    module, shape = load_model(name, INPUT, 10)
    return Space(name, model_space(module, shape, samples, seed=0), [])


def spaces(quick: bool) -> list[Space]:
    if quick:
        return [grid(True), model("resnet20", 40)]
    return [grid(False), model("resnet20", 400), model("mobilenetv2", 450), model("resnet18", 300)]


def collect_space(work: Path, space: Space, again: bool) -> None:
    """Measure ``space``'s table (and its test table), or with ``again`` its second collection, on
    the built-in ``local`` device with its protocol."""
    if again:
        rng = np.random.default_rng(1)
        picks = rng.choice(len(space.configs), min(REPEAT, len(space.configs)), replace=False)
        parts = [(" (repeat)", [space.configs[i] for i in sorted(picks)], "repeat")]
    else:
        parts = [("", space.configs, "tables"), (" (test)", space.test, "test")]
    for label, configs, folder in parts:
        if configs:
            start = time.perf_counter()
            summary = collect(LOCAL, configs, parse_policy("default"), work / space.name / folder, work / "cache")
            print(
                f"{space.name}{label}: {summary.measured} measured, {summary.skipped} already, "
                f"{summary.failed} failed ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


def build_space(work: Path, space: Space) -> None:
    """Build every config of ``space`` (and of its test table) into ``--work/cache`` on every CPU,
    timing nothing: a later collection takes them from the cache."""
    from hwloop.builder import BuildJob, BuildPool, BuildQueue

    target = resolve(LOCAL.target, LOCAL.protocol.threads)
    policy = parse_policy("default").name
    configs = list(dict.fromkeys(space.configs + space.test))
    start, failed = time.perf_counter(), 0
    with BuildPool(work / "cache") as pool:
        for built in BuildQueue(pool, [BuildJob(c, target, policy) for c in configs]):
            failed += built.error is not None
    print(f"{space.name}: {len(configs)} built, {failed} failed ({time.perf_counter() - start:.0f} s)", flush=True)


# --- scoring ------------------------------------------------------------------------------------

LATENCY_BANDS = (0.01, 0.1, 1.0)  # ms: the edges of the latency ranges scored apart
CURVE = (25, 50, 100, 200, 300, 400, 500)
SEEDS = 5  # draws of each random split, their held-out rows scored together


def rows_of(tables_dir: Path) -> pd.DataFrame:
    """A table's rows as the predictor learns them: one per config, its fastest pass, paced."""
    from hwloop.predictor.selection import select

    return select(tables.read(tables_dir, "local"), str(tables_dir), POLICY).rows


def repeats(rows: pd.DataFrame) -> list[list[float]]:
    """Each config's repeated measurements: its passes, where it was measured in several, or else
    the medians of the trials kept for its row (empty for a row of neither)."""
    trials = rows.trial_latencies_ms if "trial_latencies_ms" in rows else [None] * len(rows)
    return [list(p) if len(p) > 1 else list(t if t is not None else []) for p, t in zip(rows.pass_latencies_ms, trials)]


def steady(rows: pd.DataFrame, within: float = 0.05) -> np.ndarray:
    """Configs whose repeated measurements (:func:`repeats`) all lie within ``within`` of the
    latency it keeps (as :func:`hwloop.trust.agreement` judges trials)."""
    return np.array(
        [
            len(r) > 1 and max(abs(v / latency - 1) for v in r) <= within
            for r, latency in zip(repeats(rows), rows.latency_ms)
        ]
    )


def protocol(rows: pd.DataFrame) -> dict:
    """How a space's table was measured: the schedule policy (the rules' revision), the protocol's
    fields, how a row's latency was made from its trials (``estimator``; None for rows made before
    trials) and the passes over each config."""
    estimator = rows.estimator.dropna() if "estimator" in rows else pd.Series(dtype=object)
    return {
        "schedule": rows.schedule.iloc[0],
        "protocol": json.loads(rows.protocol.iloc[0]),
        "estimator": estimator.iloc[0] if len(estimator) else None,
        "passes": int(max(len(p) for p in rows.pass_latencies_ms)),
        "measured": [str(rows.measured_at.min())[:10], str(rows.measured_at.max())[:10]],
    }


def learners() -> dict:
    """Each learner as ``fit(train_rows) -> predict(rows)``."""
    from hwloop.predictor.latency import LatencyModel

    return {
        "hwloop": lambda train: LatencyModel.train(train).predict_frame,
        "work model": _work_only,
        "xgboost, FLOPs margin": _flops_margin,
        "random forest (nn-Meter)": _random_forest,
        "lightgbm": _lightgbm,
    }


def _work_only(train: pd.DataFrame):
    """The work model alone (no booster)."""
    from hwloop.predictor import features
    from hwloop.predictor.latency import LatencyModel

    model = LatencyModel.train(train)
    return lambda rows: model.work_ms(features.from_frame(rows))


def _matrix(rows: pd.DataFrame, lanes: int, registers: int) -> tuple[np.ndarray, dict]:
    from hwloop.predictor import features, rules

    cols = features.from_frame(rows)
    work = rules.quantities(cols, lanes, registers)
    return features.matrix(cols, lanes, work), work


def _flops_margin(train: pd.DataFrame):
    """hwloop's features and booster, from the log FLOPs the loops execute instead of the work model."""
    import xgboost as xgb

    from hwloop.predictor.latency import PARAMS, ROUNDS, vector_unit

    unit = vector_unit(train.target.iloc[0])
    x, work = _matrix(train, *unit)
    booster = xgb.train(
        PARAMS,
        xgb.DMatrix(x, label=np.log(train.latency_ms.to_numpy()), base_margin=np.log(work["vector_fmas"])),
        ROUNDS,
    )

    def predict(rows):
        x, work = _matrix(rows, *unit)
        return np.exp(booster.inplace_predict(x, base_margin=np.log(work["vector_fmas"])))

    return predict


def _nn_meter_features(rows: pd.DataFrame) -> np.ndarray:
    """nn-Meter's kernel features: input size, channels, kernel, stride, FLOPs, parameters (and the op)."""
    params = rows.out_channels * rows.in_channels // rows.groups * rows.kernel**2
    return np.column_stack(
        [
            rows.input_h,
            rows.in_channels,
            rows.out_channels,
            rows.kernel,
            rows.stride,
            2e-6 * rows.macs,
            1e-6 * params,
            rows.op == "depthwise_conv2d",
            rows.op == "linear",
        ]
    ).astype(np.float32)


def _random_forest(train: pd.DataFrame):
    """nn-Meter's learner: a random forest (300 trees on bootstrap-sized samples, 60 % of the features
    per split; XGBoost's random-forest mode) on its kernel features, fitted to latency."""
    import xgboost as xgb

    params = {
        "num_parallel_tree": 300,
        "subsample": 0.632,
        "colsample_bynode": 0.6,
        "eta": 1.0,
        "max_depth": 12,
        "min_child_weight": 1.0,
        "lambda": 0.0,
        "tree_method": "hist",
        "seed": 0,
    }
    forest = xgb.train(params, xgb.DMatrix(_nn_meter_features(train), label=train.latency_ms.to_numpy()), 1)
    return lambda rows: forest.inplace_predict(_nn_meter_features(rows).astype(np.float32))


def _lightgbm(train: pd.DataFrame):
    """hwloop's features and work model, with LightGBM in place of XGBoost."""
    import lightgbm

    from hwloop.predictor import features
    from hwloop.predictor.latency import ROUNDS, LatencyModel

    model = LatencyModel.train(train)
    x, _ = _matrix(train, model.lanes, model.registers)
    margin = np.log(model.work_ms(features.from_frame(train)))
    booster = lightgbm.train(
        {
            "objective": "regression",
            "learning_rate": 0.1,
            "num_leaves": 15,
            "min_data_in_leaf": 3,
            "verbose": -1,
            "seed": 0,
        },
        lightgbm.Dataset(x, np.log(train.latency_ms.to_numpy()), init_score=margin),
        ROUNDS,
    )

    def predict(rows):
        x, _ = _matrix(rows, model.lanes, model.registers)
        return np.exp(booster.predict(x)) * model.work_ms(features.from_frame(rows))

    return predict


def breakdown(rows: pd.DataFrame, predicted: np.ndarray, lanes: int, learnt: np.ndarray | None = None) -> dict:
    """Scores overall, on steady configs, per op family, latency range, input size and output-channel
    alignment, and (given ``learnt``: whether a training row took each row's path of the rules) on
    rows of a path the training rows took."""
    from hwloop.predictor.evaluation import scores

    measured = rows.latency_ms.to_numpy()
    groups = {"all": np.ones(len(rows), dtype=bool), "steady": steady(rows)}
    if learnt is not None:
        groups["learnt path"] = learnt
    groups.update({f"op {op}": (rows.op == op).to_numpy() for op in sorted(rows.op.unique())})
    edges = (0.0, *LATENCY_BANDS, np.inf)
    for low, high in zip(edges, edges[1:]):
        groups[f"{low:g}-{high:g} ms"] = (measured >= low) & (measured < high)
    for h, w in sorted(set(zip(rows.input_h, rows.input_w))):
        groups[f"input {h}x{w}"] = ((rows.input_h == h) & (rows.input_w == w)).to_numpy()
    aligned = (rows.out_channels % lanes == 0).to_numpy()
    groups.update({f"out channels multiple of {lanes}": aligned, f"out channels not multiple of {lanes}": ~aligned})
    return {name: scores(measured[mask], predicted[mask]) for name, mask in groups.items() if mask.any()}


def fit_and_evaluate(folder: Path) -> dict:
    """What ``hwloop fit`` keeps (its held-out scores) and, where the space has a table measured
    apart, what ``hwloop evaluate --table`` says of it."""
    from hwloop.predictor import Predictor
    from hwloop.predictor.evaluation import evaluate

    predictor = Predictor.fit(tables.read(folder / "tables", "local"), "local")
    strip = ("within_5", "within_10", "within_15", "mape", "spearman", "rows")
    result = {
        "metrics": {
            split: {k: s[k] for k in (*strip, "unlearnt_paths")} for split, s in predictor.meta["metrics"].items()
        }
    }
    if (folder / "test").exists():
        scored = evaluate(predictor, tables.read(folder / "test", "local"), str(folder / "test"))
        result["evaluate"] = {k: scored[k] for k in strip}
    return result


def score_space(folder: Path, name: str) -> dict:
    """Every learner on every split of a space's table (see the module's docstring)."""
    from hwloop.predictor.evaluation import splits
    from hwloop.predictor.latency import vector_unit
    from hwloop.predictor.sampling import learning_curve

    rows = rows_of(folder / "tables")
    lanes = vector_unit(rows.target.iloc[0])[0]
    tests = {k: v for k, v in splits(rows).items() if k != "unseen_shapes"}
    repeated = int(sum(len(r) > 1 for r in repeats(rows)))
    result = {
        "space": name,
        "configs": int(len(rows)),
        "ops": rows.op.value_counts().to_dict(),
        "run": run(),
        "table": protocol(rows),
        "repeats_agree": {"configs": repeated, "within_5": float(steady(rows).sum() / max(repeated, 1))},
        "splits": {},
        "curve": [],
    }
    if (folder / "repeat").exists():
        result["collections_agree"] = collections_agree(rows, rows_of(folder / "repeat"))
    result["fit"] = fit_and_evaluate(folder)
    fits = learners()
    for split in ("config", "unseen_channels"):
        draws = [m for seed in range(SEEDS) for m in [splits(rows, seed).get(split)] if m is not None]
        if draws:
            result["splits"][split] = {**held_out(rows, draws, fits, lanes), "seeds": len(draws)}
    if "sizes_between" in tests:
        result["splits"]["sizes_between"] = held_out(rows, [tests["sizes_between"]], fits, lanes)
        folds = size_folds(rows, tests["sizes_between"])
        if folds:
            result["splits"]["each_size_between"] = held_out(rows, folds, fits, lanes)
    if (folder / "test").exists():
        held = rows_of(folder / "test")
        result["splits"]["between"] = {
            "train": int(len(rows)),
            "train_per_op": rows.op.value_counts().to_dict(),
            "learners": {
                label: {
                    f"{size}x{size}": breakdown(
                        held[held.input_h == size].reset_index(drop=True), predict(held[held.input_h == size]), lanes
                    )
                    for size in sorted(held.input_h.unique())
                }
                for label, fit in fits.items()
                for predict in [fit(rows)]
            },
        }
    test = tests["config"]
    pool, held = rows[~test], rows[test].reset_index(drop=True)
    sizes = [s for s in CURVE if s < len(pool)] + [len(pool)]
    for size in sizes:
        for seed in range(3):
            chosen = pool.sample(size, random_state=seed)
            for label in ("hwloop", "random forest (nn-Meter)"):
                scored = breakdown(held, fits[label](chosen)(held), lanes)
                result["curve"].append(
                    {
                        "samples": size,
                        "seed": seed,
                        "learner": label,
                        "within_10": scored["all"]["within_10"],
                        "steady_within_10": scored.get("steady", {}).get("within_10"),
                    }
                )
    for point in learning_curve(rows, test, sizes, adaptive=True):
        result["curve"].append(
            {
                "samples": point["samples"],
                "seed": 0,
                "learner": "hwloop, adaptive",
                "within_10": point["within_10"],
                "steady_within_10": None,
            }
        )
    return result


def held_out(rows: pd.DataFrame, tests: list[np.ndarray], fits: dict, lanes: int) -> dict:
    """Each learner trained on the rows outside each mask of ``tests`` and scored on its rows, the
    held-out rows of every mask scored together (a row held out by several draws counts each time);
    ``train``: the fewest and most rows trained on; ``each``: hwloop's share within ±10 % per mask."""
    from hwloop.predictor.evaluation import scores

    held = pd.concat([rows[test] for test in tests], ignore_index=True)
    predicted = {
        label: [fit(rows[~test])(rows[test].reset_index(drop=True)) for test in tests] for label, fit in fits.items()
    }
    trained = [int((~test).sum()) for test in tests]
    path = paths(rows)
    learnt = np.concatenate([np.isin(path[test], path[~test]) for test in tests])
    return {
        "train": [min(trained), max(trained)],
        "train_per_op": rows[~tests[int(np.argmin(trained))]].op.value_counts().to_dict(),
        "learners": {label: breakdown(held, np.concatenate(p), lanes, learnt) for label, p in predicted.items()},
        "each": [scores(rows.latency_ms[test], p)["within_10"] for test, p in zip(tests, predicted["hwloop"])],
    }


def paths(rows: pd.DataFrame) -> np.ndarray:
    """The path of the ``default`` rules each row takes on its target."""
    from hwloop.predictor import features, rules
    from hwloop.predictor.latency import vector_unit

    quantities = rules.quantities(features.from_frame(rows), *vector_unit(rows.target.iloc[0]))
    return rules.path_names(quantities["path"])


def size_folds(rows: pd.DataFrame, between: np.ndarray) -> list[np.ndarray]:
    """One test mask per input size of the rows ``between`` (those of a size lying between two others
    of their op, kernel and stride): that size's rows of those ops, the rest (other sizes between
    included) trained on."""
    return [between & (rows.input_h == size).to_numpy() for size in sorted(rows.input_h[between].unique())]


def run() -> dict:
    """The commit, the date and the command of this run."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["bench/predictor.py", *sys.argv[1:]]),
    }


def machine() -> dict:
    from hwloop.predictor.latency import vector_unit

    target = resolve({"kind": "llvm", "mcpu": "host"}, 1)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "llvm_cpu": _llvm_cpu(),
        "lanes": vector_unit(json.dumps(target))[0],
        "cores": os.cpu_count(),
        **run(),
    }


def _llvm_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-out/predictor"), help="tables and build cache (kept)")
    parser.add_argument("--results", type=Path, default=Path("docs/results/predictor/results"))
    parser.add_argument(
        "--stages",
        default="collect,repeat,score",
        help="comma-separated: build (every config into the cache, timing nothing: the shared lock "
        "suffices), collect (the tables), repeat (the second collections), score, "
        "agree (only update the scored results with how the second collections agree)",
    )
    parser.add_argument("--spaces", help="comma-separated space names (default: all)")
    parser.add_argument("--quick", action="store_true", help="a few dozen configs per space")
    args = parser.parse_args()
    chosen = [s for s in spaces(args.quick) if not args.spaces or s.name in args.spaces.split(",")]
    stages = set(args.stages.split(","))
    if "score" in stages and importlib.util.find_spec("lightgbm") is None:
        parser.error("the score stage compares LightGBM too: install it first (.venv/bin/pip install -e '.[bench]')")
    if "build" in stages:
        for space in chosen:
            build_space(args.work, space)
    for stage in ("collect", "repeat"):
        if stage in stages:
            for space in chosen:
                collect_space(args.work, space, again=stage == "repeat")
    if "score" in stages:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")
        for space in chosen:
            result = score_space(args.work / space.name, space.name)
            (args.results / f"{space.name}.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"{space.name}: scored → {args.results / space.name}.json", flush=True)
    if "agree" in stages:
        for space in chosen:
            path, folder = args.results / f"{space.name}.json", args.work / space.name
            result = json.loads(path.read_text())
            result["collections_agree"] = collections_agree(rows_of(folder / "tables"), rows_of(folder / "repeat"))
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"{space.name}: collections agree {result['collections_agree']}", flush=True)


if __name__ == "__main__":
    main()
