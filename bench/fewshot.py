"""A new board in twenty measurements: few-shot predictors transferred from a board already measured.

    flock -x /work/cpu.lock .venv/bin/python -m bench.fewshot collect --work /work/data/fewshot
    flock -x /work/cpu.lock .venv/bin/python -m bench.fewshot score --work /work/data/fewshot
    flock -x /work/cpu.lock .venv/bin/python -m bench.fewshot workflow --work /work/data/fewshot   (optional)
    .venv/bin/python docs/results/fewshot/make.py

The devices (a registry written to ``--work/registry``), all this machine's CPU, ``default`` rules:
``local`` (the source: this CPU's own vector width, 1 thread pinned to CPU 0), ``local-sse4.2`` (the
same CPU with AVX, AVX2 and AVX-512 switched off in the target's ``mattr``: the rules then vectorise by
4 float32 lanes in 16 registers) and ``local-2t`` (2 threads pinned to CPUs 0 and 1). The pairs:
``local`` → ``local-sse4.2`` and ``local`` → ``local-2t``.

**collect**: the same ``--samples`` configs of ResNet-20's layer space at Fashion-MNIST's 1x28x28
input on each device (``--work/tables``), and whole ResNet-20s end to end: the dense one and copies
thinned to 7/8 ... 1/4 of their channels (the model tables, for the whole-model calibration). Each
device's configs are built first, on every CPU, then timed with every build in the cache: nothing
compiles beside a timing CPU (on a 2-core machine, the only other CPU). Then 40 of the configs are
collected again on each device (``--work/repeat``), minutes after its table: how far two collections
agree. Tables are kept: a re-run measures only what is missing. Writes ``collect.json`` (what each
device's table holds).

**score**: per pair, a fixed third of the target's configs is held out; predictors are fitted on
samples of the rest (random, seeded, 5 to 200; and chosen as ``hwloop collect --adaptive --from``
chooses them) and scored on the held-out configs: the few-shot transfer from the source's
predictor beside a predictor fitted from scratch on the same samples, the transfer's parts on
their own (the method's choice), and the source's own timings mapped through one power law (the
best a transfer through the source's figure can do); the ratio of the target's latency to the
source's, by the source's latency; the whole-model calibration from one to three whole-model timings
of the target, scored on the target's other whole models. Writes ``scores.json``.

**workflow**: the whole workflow with the CLI on a target, in a tables folder of its own: the
source's predictor (``hwloop fit``), 20 configs chosen and measured (``hwloop collect --adaptive
--budget 20 --from local``), two whole models timed (``hwloop measure --thinned 0.5``), the few-shot
predictor (``hwloop fit --from local``), pruning for half the latency with ``--board-rounds 2``,
and ``hwloop validate``; writes ``workflow-TARGET.json`` with each command and its output.

Every results file records the machine, the commit and the command (:mod:`bench.machine`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
import yaml

from bench.machine import provenance
from hwloop import tables
from hwloop.builder import BuildJob, BuildPool
from hwloop.collect import collect
from hwloop.endtoend import ModelCase, measure_models
from hwloop.models import load_model
from hwloop.predictor import Predictor, calibration, features, fewshot, rules
from hwloop.predictor.calibration import calibrate, model_rows
from hwloop.predictor.evaluation import collections_agree, noise_floor, scores
from hwloop.predictor.latency import PARAMS, ROUNDS, LatencyModel, vector_unit
from hwloop.predictor.sampling import choose, learning_curve, transfer_design
from hwloop.predictor.selection import fastest_pass, select
from hwloop.prune.groups import thinned_cases
from hwloop.registry import load_registry
from hwloop.rows import Context
from hwloop.schedules import parse_policy
from hwloop.tracing import model_space

INPUT = (1, 1, 28, 28)
SOURCE = "local"
DEVICES = {
    SOURCE: {
        "transport": "local",
        "target": {"kind": "llvm", "mcpu": "host"},
        "protocol": {"threads": 1, "cpus": [0]},
        "description": "this CPU, 1 thread",
    },
    "local-sse4.2": {
        "transport": "local",
        "target": {"kind": "llvm", "mcpu": "host", "mattr": ["-avx", "-avx2", "-avx512f"]},
        "protocol": {"threads": 1, "cpus": [0]},
        "description": "this CPU without AVX: SSE4.2 code",
    },
    "local-2t": {
        "transport": "local",
        "target": {"kind": "llvm", "mcpu": "host"},
        "protocol": {"threads": 2, "cpus": [0, 1]},
        "description": "this CPU, 2 threads",
    },
}
TARGETS = ("local-sse4.2", "local-2t")
REPEAT = 40  # configs of each device collected a second time, after every device's table
SHARES = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
RESULTS = Path("docs/results/fewshot/results")
WORK = Path("bench-out/fewshot")
POLICY = parse_policy("default").name


def registry(work: Path):
    """The study's registry, written to ``work/registry``."""
    folder = work / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "devices.yaml").write_text(yaml.safe_dump({"devices": DEVICES}, sort_keys=False))
    return load_registry(folder)


def space(samples: int) -> list:
    model, shape = load_model("resnet20", INPUT)
    return model_space(model, shape, samples, seed=0)


def model_cases() -> list[ModelCase]:
    """The dense ResNet-20 and thinned copies, named as ``hwloop measure`` names them."""
    dense = ModelCase("resnet20", *load_model("resnet20", INPUT))
    return [dense, *thinned_cases(dense, SHARES)]


def prebuild(device, configs, cache: Path) -> None:
    """Build ``configs`` for ``device`` on every CPU before any is timed."""
    context = Context.of(device, parse_policy("default"))
    with BuildPool(cache) as pool:
        futures = [pool.submit(BuildJob(c, context.target, context.policy.name, device.cc)) for c in configs]
        failed = sum(f.result().error is not None for f in futures)
    print(f"{device.name}: {len(futures)} configs built ({failed} failed)", flush=True)


def collect_stage(args) -> None:
    devices = registry(args.work)
    configs = space(args.samples)
    policy = parse_policy("default")
    cache, tables_dir = args.work / "cache", args.work / "tables"
    timing = {}
    for name in DEVICES:
        device = devices.get(name)
        start = time.perf_counter()
        prebuild(device, configs, cache)
        built_s = time.perf_counter() - start
        summary = collect(device, configs, policy, tables_dir, cache)
        timing[name] = {"collect_s": round(summary.wall_s, 1), "retaken": summary.retaken}
        print(
            f"{name}: {summary.measured} measured, {summary.skipped} already, {summary.failed} failed, "
            f"{summary.retaken} taken again ({summary.wall_s:.0f} s, after {built_s:.0f} s of builds)",
            flush=True,
        )
        rows = measure_models(device, model_cases(), policy, tables_dir, cache)
        print(f"{name}: {sum(r['status'] == 'ok' for r in rows)} whole models timed", flush=True)
    picks = np.random.default_rng(1).choice(len(configs), min(REPEAT, len(configs)), replace=False)
    for name in DEVICES:
        summary = collect(devices.get(name), [configs[i] for i in sorted(picks)], policy, args.work / "repeat", cache)
        print(f"{name} (repeat): {summary.measured} measured, {summary.skipped} already", flush=True)
    record = {
        **provenance(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "samples": args.samples,
        "input_shape": list(INPUT),
        "devices": {},
    }
    for name, entry in DEVICES.items():
        table, models = tables.read(tables_dir, name), tables.read_models(tables_dir, name)
        record["devices"][name] = {
            **entry,
            "sentinel": devices.get(name).protocol.sentinel,
            "configs": int(table.config_id.nunique()),
            "ok": int((table.status == "ok").sum()),
            "quiet": int(table.quiet.ne(False).sum()),
            "disturbed": int(table.disturbed.fillna(0).sum()),
            **timing[name],
            "models": sorted(models[models.status == "ok"].model.unique()),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "collect.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"→ {args.out / 'collect.json'}")


# --- scoring ------------------------------------------------------------------------------------

SIZES = (5, 10, 20, 30, 50, 100, 200)
RATIO_BINS = ((0.0, 0.005), (0.005, 0.01), (0.01, 0.02), (0.02, 0.05), (0.05, 1000.0))
SEEDS = 5
HELD_OUT = 1 / 3
HANDFULS = {
    "none": (),
    "dense": ("resnet20",),
    "dense and 1/2": ("resnet20", "resnet20@thinned:0.5"),
    "dense, 1/2 and 1/4": ("resnet20", "resnet20@thinned:0.5", "resnet20@thinned:0.25"),
}


def rows_of(folder: Path, device: str) -> pd.DataFrame:
    """A device's rows of the tables in ``folder`` as a predictor learns them (quiet, one per config)."""
    return select(tables.read(folder, device), f"{folder / device}", POLICY).rows


def learners(source: LatencyModel, source_rows: pd.DataFrame) -> dict:
    """Each learner as ``fit(train_rows) -> model`` with ``predict_frame``: what ``hwloop fit --from``
    does (the transfer of the source's trees or, from 10 rows on, the rows' own trees, whichever
    predicts the rows better by five folds), each of those and the transfer's parts on their own, a
    model over both devices with device descriptors, and a predictor fitted from scratch."""

    def parts(**options):
        return lambda train: fewshot.transfer(source, train, **options)

    return {
        "few-shot": lambda train: fewshot.transfer_from([source], train),
        "from scratch": LatencyModel.train,
        "transfer alone": lambda train: fewshot.transfer(source, train),
        "own trees alone": lambda train: fewshot.own_trees(source, train),
        "source, retargeted": lambda train: fewshot.retarget(source, *vector_unit(train.target.iloc[0])),
        "one scale": parts(path_rows=1 << 30, tree_rounds=0, overhead=False, anchor=None),
        "scale and overhead": parts(path_rows=1 << 30, tree_rounds=0, anchor=None),
        "per path": parts(tree_rounds=0, anchor=None),
        "per path, terms refitted": parts(tree_rounds=0),
        "both devices, descriptors": lambda train: Pooled(source_rows, train),
        "source's timings, one curve": lambda train: ThroughSource(source_rows, train),
    }


class ThroughSource:
    """The target's latency as one power law of the source's *measured* latency of the same config
    (``log t = a + b log s``, least squares on the sample): what any transfer that maps the
    source's figure through one monotone curve can reach at best, the source's own error aside."""

    def __init__(self, source_rows: pd.DataFrame, target_rows: pd.DataFrame):
        self.source = source_rows.set_index("config_id").latency_ms
        x = np.log(self.source.loc[target_rows.config_id].to_numpy())
        self.b, self.a = np.polyfit(x, np.log(target_rows.latency_ms.to_numpy()), 1) if len(x) > 1 else (1.0, 0.0)

    def predict_frame(self, rows: pd.DataFrame) -> np.ndarray:
        return np.exp(self.a + self.b * np.log(self.source.loc[rows.config_id].to_numpy()))


def ratios(source_rows: pd.DataFrame, rows: pd.DataFrame) -> list[dict]:
    """Target over source latency of the configs both measured, by the source's latency."""
    both = rows.set_index("config_id")[["latency_ms", "latency_cv"]].join(
        source_rows.set_index("config_id")[["latency_ms", "latency_cv"]], rsuffix="_source", how="inner"
    )
    ratio = both.latency_ms / both.latency_ms_source
    result = []
    for low, high in RATIO_BINS:
        mine = (both.latency_ms_source > low) & (both.latency_ms_source <= high)
        if mine.any():
            result.append(
                {
                    "source_ms": [low, high],
                    "configs": int(mine.sum()),
                    "ratio": [float(ratio[mine].quantile(q)) for q in (0.25, 0.5, 0.75)],
                    "cv": float(both.latency_cv[mine].median()),
                    "source_cv": float(both.latency_cv_source[mine].median()),
                }
            )
    return result


class Pooled:
    """One booster over the source's rows and the target's, with device descriptors (float32 lanes,
    threads, which device) beside the features, from the source's work model retargeted to each
    row's device; the target's rows weigh as much as the source's together."""

    def __init__(self, source_rows: pd.DataFrame, target_rows: pd.DataFrame):
        self.source = LatencyModel.train(source_rows)
        frames = [self._matrix(source_rows, 0.0), self._matrix(target_rows, 1.0)]
        weight = np.concatenate(
            [np.ones(len(source_rows)), np.full(len(target_rows), len(source_rows) / len(target_rows))]
        )
        x = np.vstack([f[0] for f in frames])
        margin = np.concatenate([f[1] for f in frames])
        label = np.log(np.concatenate([source_rows.latency_ms, target_rows.latency_ms]))
        self.booster = xgb.train(
            {**PARAMS, "seed": 0}, xgb.DMatrix(x, label=label, base_margin=margin, weight=weight), ROUNDS
        )
        self.target = target_rows.iloc[:1]

    def _matrix(self, rows: pd.DataFrame, which: float) -> tuple[np.ndarray, np.ndarray]:
        lanes, registers = vector_unit(rows.target.iloc[0])
        threads = json.loads(rows.protocol.iloc[0])["threads"]
        cols = features.from_frame(rows)
        x = features.matrix(cols, lanes, rules.quantities(cols, lanes, registers))
        descriptors = np.tile(np.array([lanes, threads, which], dtype=np.float32), (len(rows), 1))
        margin = np.log(fewshot.retarget(self.source, lanes, registers).work_ms(cols))
        return np.hstack([x, descriptors]), margin

    def predict_frame(self, rows: pd.DataFrame) -> np.ndarray:
        rows = rows.assign(target=self.target.target.iloc[0], protocol=self.target.protocol.iloc[0])
        x, margin = self._matrix(rows, 1.0)
        return np.exp(self.booster.inplace_predict(x, base_margin=margin))


def designed(pool: pd.DataFrame, size: int, source: LatencyModel, adaptive: bool) -> pd.DataFrame:
    """``size`` rows of ``pool`` chosen as ``hwloop collect --adaptive --from`` chooses them (replayed:
    a chosen row's latency is revealed): :func:`transfer_design`, with ``adaptive`` for half of
    them and then rounds of :func:`choose` with few-shot members, else for all."""
    lanes, registers = vector_unit(pool.target.iloc[0])
    prior = [fewshot.retarget(source, lanes, registers)]
    first = transfer_design(pool, max(size // 2, 1) if adaptive else size, prior, lanes, registers)
    chosen = pool[pool.config_id.isin(first.config_id)]
    rounds = 3
    for round_index in range(rounds if adaptive else 0):
        left = size - len(chosen)
        if left <= 0:
            break
        picks = choose(
            pool,
            chosen.reset_index(drop=True),
            -(-left // (rounds - round_index)),
            round_index,
            lambda rows, seed: fewshot.transfer_from([source], rows, seed),
        )
        chosen = pd.concat([chosen, pool[pool.config_id.isin(picks.config_id)]])
    return chosen


def score_pair(work: Path, target: str) -> dict:
    """Every learner on samples of the target's rows (see the module's docstring), and the whole-model calibrations."""
    source_rows, rows = rows_of(work / "tables", SOURCE), rows_of(work / "tables", target)
    source = LatencyModel.train(source_rows)
    test = np.random.default_rng(0).permutation(len(rows)) < round(HELD_OUT * len(rows))
    pool, held = rows[~test].reset_index(drop=True), rows[test].reset_index(drop=True)
    fits = learners(source, source_rows)
    measured = held.latency_ms.to_numpy()
    result = {
        "source": SOURCE,
        "target": target,
        "source_rows": int(len(source_rows)),
        "rows": int(len(rows)),
        "held_out": int(len(held)),
        "lanes": {d: vector_unit(r.target.iloc[0])[0] for d, r in ((SOURCE, source_rows), (target, rows))},
        "noise": noise_floor(held),
        "collections_agree": collections_agree(rows, rows_of(work / "repeat", target)),
        "ratios": ratios(source_rows, rows),
        "curve": [],
        "designed": [],
    }
    for size in [s for s in SIZES if s <= len(pool)]:
        for seed in range(SEEDS if size < len(pool) else 1):
            sample = pool.sample(size, random_state=seed)
            for label, fit in fits.items():
                point = scores(measured, fit(sample).predict_frame(held))
                result["curve"].append({"learner": label, "samples": size, "seed": seed, **point})
        print(f"{target}: {size} samples scored", flush=True)
    for size in (20, 50):
        for adaptive in (False, True):
            sample = designed(pool, size, source, adaptive)
            for label in ("few-shot", "from scratch"):
                point = scores(measured, fits[label](sample).predict_frame(held))
                result["designed"].append({"learner": label, "samples": size, "adaptive": adaptive, **point})
        scratch_design = learning_curve(rows, test, [size // 2, size], adaptive=True)[-1]
        result["designed"].append(
            {"learner": "from scratch, its own adaptive design", "adaptive": True, **scratch_design}
        )
    result["calibration"] = score_calibration(work, target, designed(pool, 20, source, False), source)
    return result


def score_calibration(work: Path, target: str, sample: pd.DataFrame, source: LatencyModel) -> dict:
    """Whole-model calibrations of the few-shot predictor fitted on ``sample``, from a handful of
    the target's whole-model timings, scored on the target's other whole models."""
    source_predictor = Predictor.fit(
        tables.read(work / "tables", SOURCE), SOURCE, evaluate=False, models=tables.read_models(work / "tables", SOURCE)
    )
    few = Predictor(
        fewshot.transfer(source, sample),
        {"device": target, "schedule": POLICY, "protocol_id": sample.protocol_id.iloc[0]},
    )
    rows = fastest_pass(model_rows(tables.read_models(work / "tables", target), few), "model_id")
    reference = calibrate(few, tables.read_models(work / "tables", target))
    result = {
        "source": {k: source_predictor.meta["calibration"][k] for k in (*calibration.FIELDS, "held_out_mape")},
        "all_models_held_out_mape": reference["held_out_mape"],
        "models": sorted(rows.model),
        "handfuls": {},
    }
    for name, handful in HANDFULS.items():
        mine = rows.model.isin(handful).to_numpy()
        lines = {"source's, as is": result["source"]}
        if mine.any():
            lines["source's shape, target's scale"] = calibration.scaled(result["source"], rows[mine])
            lines["from scratch"] = calibration.fit_spill(
                *(rows[c][mine].to_numpy() for c in ("layers_ms", "weights_mib", "latency_ms"))
            )
        else:
            lines["none (the layers' sum)"] = {"scale": 1.0, "offset_ms": 0.0}
        result["handfuls"][name] = {
            "timed": sorted(rows.model[mine]),
            "scored": int((~mine).sum()),
            "lines": {
                label: {
                    **{k: line.get(k) for k in calibration.FIELDS},
                    "mape": float(
                        np.mean(
                            np.abs(
                                calibration.predicted(line, rows.layers_ms[~mine], rows.weights_mib[~mine])
                                / rows.latency_ms[~mine]
                                - 1
                            )
                        )
                    ),
                }
                for label, line in lines.items()
            },
        }
    return result


def score_stage(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = [score_pair(args.work, target) for target in TARGETS]
    path = args.out / "scores.json"
    path.write_text(
        json.dumps({**provenance(), "date": time.strftime("%Y-%m-%d", time.gmtime()), "pairs": pairs}, indent=1) + "\n"
    )
    print(f"→ {path}")


# --- the workflow on a target ------------------------------------------------------------------


def workflow_stage(args) -> None:
    """``hwloop`` commands on ``args.target``: source predictor, 20 chosen configs, two whole
    models, few-shot predictor, pruning with board rounds, validation (see the module's docstring)."""
    work, target = args.work, args.target
    registry(work)
    own = work / "workflow" / target
    common = ["--registry", work / "registry", "--cache", work / "cache"]
    shape = ["--model", "resnet20", "--input-shape", ",".join(map(str, INPUT))]
    pruned = own / "pruned"
    steps = [
        ("fit", SOURCE, "--tables", work / "tables", "--predictors", own / "predictors"),
        (
            "collect",
            target,
            *shape,
            "--adaptive",
            "--budget",
            args.budget,
            "--from",
            SOURCE,
            "--tables",
            own / "tables",
            "--predictors",
            own / "predictors",
            *common,
        ),
        ("measure", target, *shape, "--thinned", "0.5", "--tables", own / "tables", *common),
        ("fit", target, "--from", SOURCE, "--tables", own / "tables", "--predictors", own / "predictors"),
        (
            "prune",
            target,
            "--model",
            "resnet20",
            "--budget",
            "0.5",
            "--board-rounds",
            "2",
            "--train-samples",
            "6000",
            "--dense-epochs",
            "2",
            "--epochs",
            "1",
            "--out",
            pruned,
            "--tables",
            own / "tables",
            "--predictors",
            own / "predictors",
            *common,
        ),
        ("validate", target, "--model", pruned, "--tables", own / "tables", *common),
    ]
    record = {**provenance(), "target": target, "source": SOURCE, "steps": []}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for command, device, *options in steps:
        argv = ["hwloop", command, "--device", device, *map(str, options), "--json"]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True)
        print(f"$ {' '.join(argv)}: exit {done.returncode} ({time.perf_counter() - start:.0f} s)", flush=True)
        try:
            output = json.loads(done.stdout)
        except json.JSONDecodeError:
            output = done.stdout[-4000:]
        record["steps"].append(
            {
                "command": " ".join(argv),
                "exit": done.returncode,
                "seconds": time.perf_counter() - start,
                "output": output,
                "stderr": done.stderr[-2000:] if done.returncode else "",
            }
        )
        (out / f"workflow-{target}.json").write_text(json.dumps(record, indent=1) + "\n")
        if done.returncode not in (0, 1):
            break
    print(f"→ {out / f'workflow-{target}.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    collect_mode = modes.add_parser("collect", help="the devices' layer and model tables")
    collect_mode.add_argument("--samples", type=int, default=300, help="configs of ResNet-20's space per device")
    score_mode = modes.add_parser("score", help="few-shot and from-scratch predictors on samples of the targets")
    prune_mode = modes.add_parser("workflow", help="the CLI's few-shot workflow on a target, down to a pruned model")
    prune_mode.add_argument("--target", choices=TARGETS, default=TARGETS[0])
    prune_mode.add_argument("--budget", type=int, default=20, help="configs measured on the target")
    for mode in (collect_mode, score_mode, prune_mode):
        mode.add_argument("--work", type=Path, default=WORK, help="registry, tables and build cache (kept)")
        mode.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    {"collect": collect_stage, "score": score_stage, "workflow": workflow_stage}[args.mode](args)


if __name__ == "__main__":
    main()
