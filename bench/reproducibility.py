"""Whether a layer's measured latency repeats: what moves it, and whether two collections agree.

    .venv/bin/python bench/reproducibility.py trials [--trials 12] [--neighbour none|bursts|fit] [--builds]
        [--threads N]
    .venv/bin/python bench/reproducibility.py collections --space resnet20|grid [--neighbour none|bursts|fit]
        [--samples 150] [--threads N] [--sentinel FACTOR|off] [--statistic min|median]
    .venv/bin/python bench/reproducibility.py page

The first two write into ``--out`` (default: docs/results/reproducibility/results/<mode>-<time>)
with the machine, the commit and the command, and print what they found; ``page`` turns every
results folder there into docs/results/reproducibility/README.md.

``trials``: what moves one artifact's latency.
Three convs of the ResNet family (about 10 µs, 0.3 ms and 3 ms on one x86 core) are built with the
``default`` rules for this machine and timed on the built-in ``local`` device (its RPC server pinned
to CPU 0; with ``--threads N``, on N threads pinned to CPUs 0 to N-1), trial after trial, the
configs interleaved. A trial is ``repeat`` repeats of at least
``min_repeat_ms``, and each condition makes its trials more independent than the last:

* ``same``: one RPC session, the library loaded once, the same buffers: only time passes;
* ``buffers``: fresh input/output buffers for each trial (the old ones kept, so addresses move);
* ``load``: the library loaded again for each trial;
* ``session``: a new RPC session (a new forked server process) for each trial;
* ``server``: a new RPC server (a fresh interpreter, new address-space randomisation) per trial.

With ``--builds``, a build pool compiles other configs on the other CPUs meanwhile; ``--neighbour``
runs another tenant on every CPU: ``bursts`` (a two-threaded matrix product, 3 s or 8 s on and as
long off) or ``fit`` (an XGBoost fit on all CPUs). Each trial records what the host said about
itself during it: steal and iowait time (/proc/stat), load and the pinned CPU's clock.

Writes ``trials.jsonl`` and ``summary.json`` (per condition and config: the spread of the trials'
medians, their CV, the repeats' CV).

``collections``: the same space collected twice into separate tables with hwloop's own protocol
(the built-in ``local`` device; with ``--threads N``, on N threads pinned to CPUs 0 to N-1, and
``--sentinel`` and ``--statistic`` its protocol's fields), the second beside ``--neighbour``; the
space is built first, so that no build runs beside either collection's timing. Writes
``agreement.json``: the share of configs whose two latencies agree within ±5/±10 %, and the same
from the same repeats with each trial's latency taken by every statistic of
:data:`hwloop.runner.STATISTICS`; the collections' speed and how many trials were disturbed; and
for each collection, each config of the first (quiet) collection predicted by a
predictor fitted on the other three
quarters of a collection's configs (four folds), scored against the first collection.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import script_record  # noqa: E402
from hwloop.builder import BuildJob, BuildPool, build  # noqa: E402
from hwloop.kernels import random_inputs
from hwloop.layers import LayerConfig
from hwloop.registry import Protocol
from hwloop.runner import STATISTICS, Measurement, Trial
from hwloop.schedules import parse_policy
from hwloop.targets import canonical, resolve
from hwloop.transports.local import LocalTransport

CONFIGS = [
    LayerConfig("conv2d", 16, 16, 14, 14, kernel=3, padding=1),
    LayerConfig("conv2d", 64, 64, 28, 28, kernel=3, padding=1),
    LayerConfig("conv2d", 128, 128, 56, 56, kernel=3, padding=1),
]
CONDITIONS = ("same", "buffers", "load", "session", "server")
NEIGHBOURS = {
    "bursts": """
import os, random, time
import numpy as np
a = np.random.rand(1024, 1024)
while True:
    on = random.choice([3, 8])
    end = time.time() + on
    while time.time() < end:
        a @ a
    time.sleep(on)
""",
    "fit": """
import numpy as np, xgboost as xgb
x = np.random.rand(200000, 40); y = x @ np.random.rand(40)
while True:
    xgb.train({"tree_method": "hist", "max_depth": 8, "nthread": 0}, xgb.DMatrix(x, label=y), 200)
""",
}


def cpu_times(cpu: int) -> dict:
    """Jiffies of ``cpu`` from /proc/stat: user+nice+system (busy), iowait, steal and the total."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return {"busy": v[0] + v[1] + v[2], "iowait": v[4], "steal": v[7] if len(v) > 7 else 0, "total": sum(v)}
    return {}


def cpu_mhz(cpu: int) -> float | None:
    blocks = Path("/proc/cpuinfo").read_text().split("\n\n")
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        if fields.get("processor", "").strip() == str(cpu) and "cpu MHz" in fields:
            return float(fields["cpu MHz"])
    return None


class Timer:
    """Loads artifacts into a session of ``transport`` and times them, one trial at a time."""

    def __init__(self, transport, protocol: Protocol):
        self.transport, self.protocol = transport, protocol
        self.session = transport.connect()
        self.modules: dict = {}
        self.args: dict = {}
        self.kept: list = []

    def load(self, config: LayerConfig, artifact: str) -> None:
        name = f"{config.id.replace(':', '_')}-{random.getrandbits(32):08x}.so"
        self.session.upload(artifact, target=name)
        self.modules[config] = self.session.load_module(name)

    def buffers(self, config: LayerConfig) -> None:
        import tvm

        device = self.session.cpu(0)
        data, weight = random_inputs(config)
        # a buffer of random size first, and the old buffers kept alive, so the new ones sit elsewhere
        self.kept += [tvm.runtime.empty((random.randint(1, 4096),), "float32", device), *self.args.get(config, [])]
        self.args[config] = [
            tvm.runtime.tensor(data, device),
            tvm.runtime.tensor(weight, device),
            tvm.runtime.empty(config.output_shape, config.dtype, device),
        ]

    def trial(self, config: LayerConfig) -> list[float]:
        p = self.protocol
        module, device = self.modules[config], self.session.cpu(0)
        module.time_evaluator("main", device, number=p.warmup, repeat=1)(*self.args[config])
        evaluator = module.time_evaluator(
            "main", device, number=p.number, repeat=p.repeat, min_repeat_ms=p.min_repeat_ms
        )
        return [s * 1e3 for s in evaluator(*self.args[config]).results]


def run_condition(condition: str, artifacts: dict, protocol: Protocol, trials: int, log) -> None:
    level = CONDITIONS.index(condition)
    transport = LocalTransport(protocol)
    timer = None
    try:
        for trial in range(trials):
            if timer is None or level >= CONDITIONS.index("session"):
                timer = None  # the server serves one session at a time: end the last one first
                gc.collect()
                if trial and level >= CONDITIONS.index("server"):
                    transport.close()
                    transport = LocalTransport(protocol)
                timer = Timer(transport, protocol)
            order = list(artifacts)
            random.shuffle(order)
            for config in order:
                if config not in timer.modules or level >= CONDITIONS.index("load"):
                    timer.load(config, artifacts[config])
                if config not in timer.args or level >= CONDITIONS.index("buffers"):
                    timer.buffers(config)
                before, start = cpu_times(0), time.time()
                latencies = timer.trial(config)
                after = cpu_times(0)
                total = max(after.get("total", 0) - before.get("total", 0), 1)
                log(
                    {
                        "condition": condition,
                        "trial": trial,
                        "config": config.id,
                        "start": start,
                        "seconds": time.time() - start,
                        "median_ms": statistics.median(latencies),
                        "min_ms": min(latencies),
                        "cv": statistics.pstdev(latencies) / statistics.fmean(latencies),
                        "latencies_ms": latencies,
                        "cpu0_busy": (after["busy"] - before["busy"]) / total,
                        "cpu0_steal": (after["steal"] - before["steal"]) / total,
                        "cpu0_iowait": (after["iowait"] - before["iowait"]) / total,
                        "load1": os.getloadavg()[0],
                        "cpu0_mhz": cpu_mhz(0),
                    }
                )
    finally:
        transport.close()


def summarise(records: list[dict]) -> dict:
    summary = {}
    for condition in CONDITIONS:
        mine = [r for r in records if r["condition"] == condition]
        for config in dict.fromkeys(r["config"] for r in mine):
            medians = [r["median_ms"] for r in mine if r["config"] == config]
            if len(medians) < 2:
                continue
            best = min(medians)
            summary.setdefault(condition, {})[config] = {
                "trials": len(medians),
                "median_ms": statistics.median(medians),
                "min_ms": best,
                "max_over_min": max(medians) / best,
                "trials_cv": statistics.pstdev(medians) / statistics.fmean(medians),
                "within_10_of_median": float(
                    np.mean([abs(m / statistics.median(medians) - 1) <= 0.10 for m in medians])
                ),
                "repeats_cv_median": statistics.median(r["cv"] for r in mine if r["config"] == config),
                "steal_max": max(r["cpu0_steal"] for r in mine if r["config"] == config),
            }
    return summary


@contextlib.contextmanager
def neighbour(kind: str):
    if kind == "none":
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[kind]], env=dict(os.environ, OMP_NUM_THREADS="2"))
    try:
        time.sleep(2)
        yield
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def builds_running(enabled: bool, cache: Path, target: dict):
    if not enabled:
        yield
        return
    pool = BuildPool(cache / "noise", avoid_cpus=[0])
    stop = time.time() + 10**6
    futures = []

    def keep_busy():
        while time.time() < stop:
            futures[:] = [f for f in futures if not f.done()]
            while len(futures) < 2 * pool.workers:
                c = random.randint(8, 256)
                futures.append(
                    pool.submit(
                        BuildJob(
                            LayerConfig("conv2d", c, c + 1, 28, 28, 3, padding=1), target, parse_policy("default").name
                        )
                    )
                )
            time.sleep(0.2)

    import threading

    thread = threading.Thread(target=keep_busy, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop = 0
        pool.close()


def study_trials(args, out: Path) -> None:
    protocol = Protocol(
        warmup=10,
        repeat=args.repeat,
        min_repeat_ms=args.min_repeat_ms,
        threads=args.threads,
        cpus=list(range(args.threads)),
    )
    target = resolve({"kind": "llvm", "mcpu": "host"}, args.threads)
    cache = out / "cache"
    artifacts = {}
    for config in CONFIGS:
        built = build(BuildJob(config, target, parse_policy("default").name), cache)
        assert built.artifact, built.error
        artifacts[config] = built.artifact
    records = []
    with open(out / "trials.jsonl", "w") as log_file:

        def log(record):
            records.append(record)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

        with neighbour(args.neighbour), builds_running(args.builds, cache, target):
            for condition in args.conditions.split(","):
                run_condition(condition, artifacts, protocol, args.trials, log)
    summary = {
        "machine": script_record(),
        "target": canonical(target),
        "neighbour": args.neighbour,
        "builds": args.builds,
        "protocol": protocol.model_dump(),
        "conditions": summarise(records),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"{summary['machine']['cpu_model']} ({summary['machine']['llvm_cpu']}, {summary['machine']['cores']} cores), "
        f"neighbour {args.neighbour}, builds {'on' if args.builds else 'off'}, {args.threads} thread(s) → {out}"
    )
    print(
        f"{'condition':9} {'config':42} {'trials':>6} {'median ms':>10} {'max/min':>8} {'trials CV':>9} "
        f"{'±10%':>5} {'rep CV':>7} {'steal':>6}"
    )
    for condition, configs in summary["conditions"].items():
        for config, s in configs.items():
            print(
                f"{condition:9} {config:42} {s['trials']:6d} {s['median_ms']:10.4f} {s['max_over_min']:8.3f} "
                f"{s['trials_cv']:9.3%} {s['within_10_of_median']:5.0%} {s['repeats_cv_median']:7.2%} "
                f"{s['steal_max']:6.1%}"
            )
    shutil.rmtree(cache, ignore_errors=True)


def space(name: str, samples: int = 150) -> list[LayerConfig]:
    """``resnet20``: ``samples`` configs of ResNet-20's space at 28x28; ``grid``: 3x3 and 1x1 convs at
    14² and 28²."""
    if name == "resnet20":
        from hwloop.models import load_model
        from hwloop.tracing import model_space

        model, shape = load_model("resnet20", (1, 1, 28, 28))
        return model_space(model, shape, samples)
    return [
        LayerConfig("conv2d", cin, cout, hw, hw, kernel=k, padding=k // 2)
        for hw in (14, 28)
        for k in (3, 1)
        for cin in (8, 24, 40, 56, 72, 88)
        for cout in (8, 28, 48, 68, 92)
    ]


def study_collections(args, out: Path) -> None:
    from hwloop import tables
    from hwloop.collect import collect
    from hwloop.predictor import Predictor
    from hwloop.predictor.evaluation import scores
    from hwloop.registry import LOCAL

    configs = space(args.space, args.samples)
    policy = parse_policy("default")
    cache = out / "cache"
    sentinel = None if args.sentinel == "off" else float(args.sentinel)
    protocol = LOCAL.protocol.model_copy(
        update={
            "threads": args.threads,
            "cpus": list(range(args.threads)),
            "sentinel": sentinel,
            "statistic": args.statistic,
        }
    )
    device = LOCAL.model_copy(update={"protocol": protocol})
    target = resolve(device.target, args.threads)
    with BuildPool(cache) as pool:
        for done in [pool.submit(BuildJob(c, target, policy.name)) for c in configs]:
            done.result()
    runs = {}
    for name, beside in (("first", "none"), ("second", args.neighbour)):
        with neighbour(beside):
            summary = collect(device, configs, policy, out / name, cache)
        rows = tables.read(out / name, "local", where={"status": "ok"})
        runs[name] = {
            "neighbour": beside,
            "configs": int(rows.config_id.nunique()),
            "wall_s": summary.wall_s,
            "configs_per_min": 60 * len(summary.rows) / summary.wall_s,
            "retaken": summary.retaken,
            "disturbed_trials": int(rows.disturbed.sum()),
            "not_quiet": int((rows.quiet == False).sum()),  # noqa: E712
            "failed": summary.failed,
        }
    quiet = [tables.read(out / n, "local", where={"status": "ok", "quiet": True}) for n in ("first", "second")]
    agreement = agree(*(q.groupby("config_id").latency_ms.median() for q in quiet))
    by_statistic = {name: agree(*(latencies(q, name) for q in quiet)) for name in STATISTICS}
    test = quiet[0].drop_duplicates("config_id").reset_index(drop=True)
    folds = np.random.default_rng(0).permutation(len(test)) % FOLDS
    predictors = {}
    for name in runs:
        table = tables.read(out / name, "local")
        predicted = np.empty(len(test))
        for fold in range(FOLDS):
            held = set(test.config_id[folds == fold])
            fitted = Predictor.fit(table[~table.config_id.isin(held)], "local", evaluate=False)
            predicted[folds == fold] = fitted.predict_frame(test[folds == fold])
        predictors[name] = scores(test.latency_ms.to_numpy(), predicted)
    result = {
        "machine": script_record(),
        "space": args.space,
        "protocol": protocol.model_dump(),
        "runs": runs,
        "agreement": agreement,
        "agreement_by_statistic": by_statistic,
        "predictor_on_first": predictors,
    }
    (out / "agreement.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(result, indent=1))


def latencies(rows, statistic: str):
    """Each config's latency in ``rows`` (the median over its rows) made anew from every row's
    repeats, each trial's latency taken by ``statistic``, as :class:`hwloop.runner.Measurement` does."""

    def latency(row) -> float:
        trials = np.split(np.asarray(row.latencies_ms), row.trials)
        return Measurement(trials=[Trial(list(t), statistic=statistic) for t in trials]).latency_ms

    return rows.assign(latency_ms=[latency(row) for row in rows.itertuples()]).groupby("config_id").latency_ms.median()


def agree(first, second) -> dict:
    """How far two collections' latencies per config agree: the share within ±5 and ±10 %, the
    worst and the median ratio, over the configs in both."""
    ratio = (second / first).dropna()
    return {
        **{f"within_{b}": float((abs(ratio - 1) <= b / 100).mean()) for b in (5, 10)},
        "configs": int(len(ratio)),
        "worst": float(abs(ratio - 1).max()),
        "median_ratio": float(ratio.median()),
    }


RESULTS = Path("docs/results/reproducibility")
STATISTIC_NAMES = {"min": "fastest repeat", "median": "median of repeats"}
FOLDS = 4


PAGE_INTRO = """# Reproducibility: what moves a layer's latency, and whether two collections agree

Generated by `python bench/reproducibility.py page` from the folders of `results/`; each section
names its machine, commit, date and command. The protocol measured is hwloop's own (the
`protocol` of each `agreement.json`; [docs/measurement.md](../../measurement.md)).

**Collections**: one space collected twice into separate tables on the built-in `local` device, the
first on a quiet machine, the second beside a neighbour on every CPU: `bursts` (a two-threaded
matrix product, 3 s or 8 s on and as long off) or `fit` (an XGBoost fit on all CPUs), or both on a
host whose other tenants were busy (`none`: no neighbour of ours); *threads*: the kernels' threads,
on CPUs 0 to N-1; *sentinel*: the protocol's `sentinel` (none: off, or before it existed); *a
trial's latency*: the protocol's `statistic`, its fastest repeat or their median (before the field,
the median); the studies on several threads build the space before either collection is timed.
Compared: each config with a quiet row in both tables. *Predictor*: every config of the first table
predicted by a predictor fitted on the other three quarters (four folds) of the first table, or of
the second: how much a neighbour during collection costs the predictor.

**Trials**: what moves one artifact's latency. Three convs (about 10 µs, 0.5 ms and 8 ms on one
core), trial after trial, each condition more independent than the last: `same` (one session, one
load, the same buffers), `buffers` (fresh buffers per trial), `load` (the library loaded again),
`session` (a new RPC session), `server` (a new RPC server process); *builds on*: a build pool
compiles on the other CPUs meanwhile; *2 threads*: each conv runs on two threads, on CPUs 0 and 1.
"""


def plot_trials(folders: list[Path], out: Path) -> None:
    """One panel per trials study: each conv's trial medians (condition ``same``) over its fastest,
    against the seconds since the study's first trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(folders))
    rows = -(-len(folders) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3 * rows), sharey=True, squeeze=False)
    for axis, folder in zip(axes.flat, folders):
        records = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
        same = [r for r in records if r["condition"] == "same"]
        threads = json.loads((folder / "summary.json").read_text())["protocol"]["threads"]
        for config in dict.fromkeys(r["config"] for r in same):
            mine = [r for r in same if r["config"] == config]
            fastest = min(r["median_ms"] for r in mine)
            axis.plot(
                [r["start"] - same[0]["start"] for r in mine],
                [r["median_ms"] / fastest for r in mine],
                marker=".",
                label=f"{statistics.median(r['median_ms'] for r in mine) * 1e3:.0f} µs",
            )
        axis.set_title(f"{folder.name} ({threads} thread{'s' if threads > 1 else ''})", fontsize=9)
        axis.set_xlabel("seconds")
        axis.legend(fontsize=7)
    for axis in axes[:, 0]:
        axis.set_ylabel("trial / fastest trial")
    for axis in list(axes.flat)[len(folders) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def page() -> None:
    """docs/results/reproducibility/README.md from the results folders under it."""
    lines = [
        PAGE_INTRO,
        "## Two collections of one space",
        "",
        "| results | space | threads | sentinel | a trial's latency | second beside | configs compared | within ±5 % "
        "| within ±10 % | worst | configs/min: first, second | predictor within ±10 %: from first, from second |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    collections = [
        (path, json.loads(path.read_text())) for path in sorted((RESULTS / "results").glob("*/agreement.json"))
    ]
    for path, a in collections:
        agreement, runs, scored = a["agreement"], a["runs"], a["predictor_on_first"]
        sentinel = a["protocol"].get("sentinel")
        lines.append(
            f"| `{path.parent.name}` | {a['space']} | {a['protocol']['threads']} | "
            f"{f'{sentinel:g}' if sentinel else 'none'} | "
            f"{STATISTIC_NAMES[a['protocol'].get('statistic', 'median')]} | "
            f"{runs['second']['neighbour']} | {agreement['configs']} | "
            f"{agreement['within_5']:.1%} | {agreement['within_10']:.1%} | {agreement['worst']:.1%} | "
            f"{runs['first']['configs_per_min']:.0f}, {runs['second']['configs_per_min']:.0f} | "
            f"{scored['first']['within_10']:.1%}, {scored['second']['within_10']:.1%} |"
        )
    lines.append("")
    for path, a in collections:
        m = a["machine"]
        lines += [
            f"### `{path.parent.name}`",
            "",
            f"{m['cpu_model']} (LLVM CPU {m['llvm_cpu']}, {m['cores']} cores), commit {m['commit']}, "
            f"{m['date']}: `{m['command']}`; median second / first {a['agreement']['median_ratio']:.3f}.",
            "",
            "| collection | neighbour | configs | configs/min | disturbed trials dropped | rows not quiet "
            "| taken again |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, run in a["runs"].items():
            lines.append(
                f"| {name} | {run['neighbour']} | {run['configs']} | {run['configs_per_min']:.1f} | "
                f"{run['disturbed_trials']} | {run['not_quiet']} | {run['retaken']} |"
            )
        lines.append("")
        if "agreement_by_statistic" in a:
            lines += [
                "The same repeats, each trial's latency made anew by each statistic (the configs quiet in both):",
                "",
                "| a trial's latency | configs | within ±5 % | within ±10 % | worst | median second / first |",
                "|---|---|---|---|---|---|",
            ]
            for name, s in a["agreement_by_statistic"].items():
                lines.append(
                    f"| {STATISTIC_NAMES[name]} | {s['configs']} | {s['within_5']:.1%} | {s['within_10']:.1%} | "
                    f"{s['worst']:.1%} | {s['median_ratio']:.3f} |"
                )
            lines.append("")
    studies = sorted((RESULTS / "results").glob("*/summary.json"))
    if studies:
        plot_trials([path.parent for path in studies], RESULTS / "trials.png")
        lines += [
            "## Trials over time",
            "",
            "Each trial's median over the fastest of its conv, in the order taken (condition `same`: one "
            "load, the same buffers), per trial study below.",
            "",
            "![trials over time](trials.png)",
            "",
        ]
    for summary_path in studies:
        s = json.loads(summary_path.read_text())
        m = s["machine"]
        lines += [
            f"## Trials: neighbour {s['neighbour']}, builds {'on' if s['builds'] else 'off'}, "
            f"{s['protocol']['threads']} thread{'s' if s['protocol']['threads'] > 1 else ''} "
            f"(`{summary_path.parent.name}`)",
            "",
            f"{m['cpu_model']} (LLVM CPU {m['llvm_cpu']}, {m['cores']} cores), commit {m['commit']}, "
            f"{m['date']}: `{m['command']}`",
            "",
            "| condition | config | trials | median ms | slowest / fastest | CV of trials | within ±10 % "
            "| CV of repeats | steal (max) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for condition, configs in s["conditions"].items():
            for config, c in sorted(configs.items(), key=lambda item: item[1]["median_ms"]):
                lines.append(
                    f"| {condition} | `{config}` | {c['trials']} | {c['median_ms']:.4f} | "
                    f"{c['max_over_min']:.3f} | {c['trials_cv']:.2%} | {c['within_10_of_median']:.0%} | "
                    f"{c['repeats_cv_median']:.2%} | {c['steal_max']:.1%} |"
                )
        lines.append("")
    (RESULTS / "README.md").write_text("\n".join(lines))
    print(f"→ {RESULTS / 'README.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    trials = modes.add_parser("trials", help="what moves one artifact's latency")
    trials.add_argument("--trials", type=int, default=12)
    trials.add_argument("--conditions", default=",".join(CONDITIONS))
    trials.add_argument("--builds", action="store_true", help="compile other configs on the other CPUs meanwhile")
    trials.add_argument("--repeat", type=int, default=20)
    trials.add_argument("--min-repeat-ms", type=int, default=20)
    trials.add_argument("--threads", type=int, default=1, help="time on this many threads, on CPUs 0 to N-1")
    collections = modes.add_parser("collections", help="two collections of one space, compared")
    collections.add_argument("--space", choices=["resnet20", "grid"], default="resnet20")
    collections.add_argument("--samples", type=int, default=150, help="configs of the resnet20 space")
    collections.add_argument("--threads", type=int, default=1, help="time on this many threads, on CPUs 0 to N-1")
    collections.add_argument(
        "--sentinel", default=str(Protocol().sentinel), help="the protocol's sentinel factor, or off"
    )
    collections.add_argument(
        "--statistic", choices=list(STATISTICS), default=Protocol().statistic, help="a trial's latency from its repeats"
    )
    modes.add_parser("page", help="the results page from the results folders")
    for mode in (trials, collections):
        mode.add_argument("--neighbour", choices=["none", *NEIGHBOURS], default="none")
        mode.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.mode == "page":
        page()
        return
    out = args.out or RESULTS / "results" / f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (study_trials if args.mode == "trials" else study_collections)(args, out)


if __name__ == "__main__":
    main()
