"""The predictor study's page, from its results folder (``bench/predictor.py`` writes it).

    .venv/bin/python bench/predictor_page.py docs/results/predictor

Reads ``<folder>/results/*.json`` and writes ``<folder>/README.md``; every figure on the page
comes from those files. Other collections of the same spaces (each ``bench/predictor.py`` run's
results in ``<folder>/results/others/<work folder>/``) are set beside it, split by split: how far the
figures move from one collection to the next.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = {
    "config": "random configs",
    "unseen_channels": "unseen channel counts",
    "sizes_between": "input sizes between the smallest and largest, held out together",
    "each_size_between": "one input size between measured ones, held out alone",
}
TARGETS = {"config": 0.99, "unseen_channels": 0.97, "sizes_between": 0.90, "each_size_between": 0.90}
LEARNERS = ("hwloop", "lightgbm", "xgboost, FLOPs margin", "work model", "random forest (nn-Meter)")
COMMAND = """\
S=resnet20,mobilenetv2,resnet18,grid R=docs/results/predictor/results W=/work/data/predictor21
flock -s /work/cpu.lock .venv/bin/python bench/predictor.py --work $W --stages build --spaces $S
flock -x /work/cpu.lock .venv/bin/python bench/predictor.py --work $W --stages collect,repeat --spaces $S
flock -s /work/cpu.lock .venv/bin/python bench/predictor.py --work $W --stages score --spaces $S --results $W/results
mkdir -p $R/others/predictor18 && mv $R/*.json $R/others/predictor18/
cp $W/results/*.json $R/
# others/: other collections of the same spaces, as this page showed them or would have, each made by
# the same commands with its own W and results copied to $R/others/<name>: predictor18, the page's
# table before predictor21 (each trial's latency the median of its repeats, on znver4); predictor20,
# with the work model's workspaces term, on znver5 on a host whose trials agreed within ±5 % for only
# 29-47 % of configs; predictor17 under revision 11, an hour before predictor18; predictor16 under
# revision 10; under revision 9 predictor15, predictor15-first (its ResNet-20 table refused as too
# noisy), predictor14 and predictor13 (before the sentinel); each file names its command
.venv/bin/python bench/predictor_page.py docs/results/predictor"""


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def error_row(space: str, group: str, scores: dict) -> str:
    return (
        f"| {space} | {group} | {scores['rows']} | {pct(scores['within_5'])} | "
        f"{pct(scores['within_10'])} | {pct(scores['mape'])} |"
    )


def cell(scores: dict, group: str = "all") -> str:
    s = scores.get(group)
    return "-" if s is None else f"{pct(s['within_10'])} ({s['rows']})"


def unlearnt(split: dict) -> str:
    """ ", N on a path no training row took" for a ``hwloop fit`` split, or nothing."""
    count = sum((split.get("unlearnt_paths") or {}).values())
    return f", {count} on a path no training row took" if count else ""


def trained(result: dict) -> str:
    """The rows a split trained on: the fewest and most over its draws or folds, one count where they agree."""
    low, high = result["train"]
    return str(low) if low == high else f"{low}-{high}"


def spread(result: dict) -> str:
    """hwloop's lowest and highest share within ±10 % over a split's draws (``-`` for one draw)."""
    each = result.get("each", []) if result.get("seeds", 1) > 1 else []
    return f"{pct(min(each))} to {pct(max(each))}" if each else "-"


def measured(space: dict) -> str:
    """How a space's table was measured, from its results."""
    table = space["table"]
    p = table["protocol"]
    if table["estimator"] is None:
        return (
            f"passes over every config (at most {table['passes']}), each pass one median of {p['repeat']} "
            "repeats, the fastest pass counting (the protocol before trials)"
        )
    return (
        f"independent trials, each on a fresh load and fresh buffers, interleaved across batches of "
        f"{p.get('batch', 8)} configs, until {p['trials']} agree within {p['agree']:.0%} (at most "
        f"{p['max_trials']}); trials on a busy CPU dropped; the latency `{table['estimator']}`"
    )


def read_spaces(results: Path) -> list[dict]:
    """The per-space results of one run, each with the machine it ran on, in the page's order."""
    machine = json.loads((results / "machine.json").read_text())
    spaces = [json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.name != "machine.json"]
    for space in spaces:
        space["machine"] = machine
    order = {"grid": 0, "resnet20": 1, "mobilenetv2": 2, "resnet18": 3}
    return sorted(spaces, key=lambda s: order.get(s["space"], 9))


def measured_on(space: dict) -> str:
    """The date (or dates) a space's table was measured on."""
    dates = space["table"]["measured"]
    return dates[0] if dates[0] == dates[1] else f"{dates[0]} to {dates[1]}"


def work_folder(space: dict) -> str:
    """The ``--work`` folder's name in the command that scored a space."""
    words = space["run"]["command"].split()
    return Path(words[words.index("--work") + 1]).name if "--work" in words else "?"


def collections(spaces: list[dict], others: dict[str, list[dict]]) -> list[str]:
    """The page's section setting the other collections' hwloop figures beside this one's, per split."""
    runs = {work_folder(spaces[0]) if spaces else "this": spaces, **others}
    by_run = {name: {s["space"]: s for s in run} for name, run in runs.items()}
    lines = [
        "",
        "## From one collection to the next",
        "",
        "hwloop within ±10 % on each split, and how well each collection's table repeats (trials agree "
        "±5 %; a second collection within ±5 %), for each collection of the same spaces on this host: "
        "the first column is the collection above, each further one another collection (the commands above say "
        "where each came from), with the date it was measured, the host's CPU as LLVM names it (the cloud host "
        "was moved between CPUs), the rules it was built with, how a row's latency was made from its trials and "
        "the commit that scored it.",
        "",
        "| space | split | " + " | ".join(f"`{name}`" for name in by_run) + " |",
        "|---|---|" + "---|" * len(by_run),
    ]
    facts = {
        "measured": measured_on,
        "LLVM CPU": lambda space: f"`{space['machine']['llvm_cpu']}`",
        "rules": lambda space: f"`{space['table']['schedule']}`",
        "latency": lambda space: f"`{space['table']['estimator']}`" if space["table"]["estimator"] else "-",
        "scored at commit": lambda space: f"`{space['run']['commit']}`",
        "trials agree ±5 %": lambda space: pct(space["repeats_agree"]["within_5"]),
        "second collection ±5 %": lambda space: pct((space.get("collections_agree") or {}).get("within_5")),
    }
    for split, label in SPLITS.items():
        facts[label] = lambda space, split=split: (
            cell(space["splits"][split]["learners"]["hwloop"]) if split in space["splits"] else "-"
        )
    for s in spaces:
        for label, fact in facts.items():
            cells = [fact(run[s["space"]]) if s["space"] in run else "-" for run in by_run.values()]
            if label not in SPLITS.values() or any(c != "-" for c in cells):
                lines.append(f"| {s['space']} | {label} | " + " | ".join(cells) + " |")
    return lines


def page(folder: Path) -> str:
    results = folder / "results"
    machine = json.loads((results / "machine.json").read_text())
    spaces = read_spaces(results)
    others = {p.name: read_spaces(p) for p in sorted((results / "others").glob("*")) if p.is_dir()}
    lines = [
        "# Latency predictor: accuracy on held-out layers",
        "",
        f"Machine: {machine['cpu']} (LLVM CPU `{machine['llvm_cpu']}`, {machine['lanes']} float32 lanes, "
        f"{machine['cores']} cores), the built-in `local` device (1 thread pinned to CPU 0), `default` rules. "
        "Made by:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "Spaces: `grid` is 3x3 and 1x1 convs at 14² and 28² on a grid of channel counts (in 8-88, out 8-92), "
        "scored also on a table measured apart (`between`: channel counts off the grid, and an unseen 21² "
        "input); `resnet20`, `mobilenetv2`, `resnet18` are the layers of those models at Fashion-MNIST's "
        "1x28x28 input (the pruning benchmark's), with seeded random channel counts. Splits: a random quarter "
        "of the configs; every row with a held-out channel count; every row of an input size lying between two "
        "other sizes of the same op, kernel and stride, all such sizes held out together (each op trained on its "
        "smallest and largest), then each alone (trained on every other size). Each cell is the share of "
        "held-out rows predicted within ±10 % (rows in brackets); the random splits are drawn five times "
        "(seeds 0-4) and the held-out rows of every draw scored together, beside hwloop's lowest and highest "
        "draw; *steady* keeps the rows whose trials "
        "(passes, in a table measured in passes) all lie within ±5 % of the row's latency; *learnt paths* keeps "
        "the rows on a path of the rules that some training row took (a row on a path no training row took is "
        "extrapolated from the other paths).",
        "",
        "## The tables",
        "",
        "| space | measured | rules | protocol | scored at commit | command |",
        "|---|---|---|---|---|---|",
    ]
    for s in spaces:
        run = s["run"]
        rules = s["table"].get("schedule", "default@2")  # results before the field: revision 2
        lines.append(
            f"| {s['space']} | {measured_on(s)} | `{rules}` | {measured(s)} | `{run['commit']}` ({run['date']}) "
            f"| `{run['command']}` |"
        )
    older = [s["space"] for s in spaces if s["table"]["estimator"] is None]
    if older:
        lines += [
            "",
            f"The figures of {', '.join(f'`{name}`' for name in older)} come from tables measured before "
            "trials, by the command in their row: they are not yet measured again with trials, and their "
            "tables repeat less well (below).",
        ]
    lines += [
        "",
        "## How well the tables repeat",
        "",
        "No predictor agrees with a measurement better than two measurements of it agree with each other.",
        "",
        "| space | configs | per op | trials (passes) agree ±5 % | second collection: configs | ±5 % | ±10 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in spaces:
        again = s.get("collections_agree") or {}
        ops = ", ".join(f"{op} {n}" for op, n in s["ops"].items())
        lines.append(
            f"| {s['space']} | {s['configs']} | {ops} | {pct(s['repeats_agree']['within_5'])} of "
            f"{s['repeats_agree']['configs']} | {again.get('configs', '-')} | {pct(again.get('within_5'))} | "
            f"{pct(again.get('within_10'))} |"
        )
    lines += [
        "",
        "## Held out: share within ±10 %",
        "",
        "| space | split | trained on | "
        + " | ".join(LEARNERS)
        + " | hwloop, steady rows | hwloop, learnt paths | hwloop, lowest to highest draw | target |",
        "|---|---|---|" + "---|" * len(LEARNERS) + "---|---|---|---|",
    ]
    for s in spaces:
        for split, result in s["splits"].items():
            if split == "between":
                continue
            learners = result["learners"]
            target = TARGETS.get(split)
            lines.append(
                f"| {s['space']} | {SPLITS.get(split, split)} | {trained(result)} | "
                + " | ".join(cell(learners[name]) for name in LEARNERS)
                + f" | {cell(learners['hwloop'], 'steady')} | {cell(learners['hwloop'], 'learnt path')} "
                f"| {spread(result)} | {pct(target)} |"
            )
    for s in spaces:
        between = s["splits"].get("between")
        if between:
            lines += [
                "",
                f"`{s['space']}` fitted on all its {between['train']} configs, scored on `between`, measured apart:",
                "",
                "| input | " + " | ".join(LEARNERS) + " | hwloop, steady rows |",
                "|---|" + "---|" * (len(LEARNERS) + 1),
            ]
            sizes = between["learners"]["hwloop"]
            for size in sizes:
                lines.append(
                    f"| {size} | "
                    + " | ".join(cell(between["learners"][name][size]) for name in LEARNERS)
                    + f" | {cell(sizes[size], 'steady')} |"
                )
    if others:
        lines += collections(spaces, others)
    lines += [
        "",
        "## As a user sees it",
        "",
        "`hwloop fit` on each space's table (its held-out splits, as `predictor.json` keeps them; *unseen "
        "shapes* are drawn at random, so a held-out size may lie outside the measured ones) and, for "
        "`grid`, `hwloop evaluate --table` on `between`:",
        "",
        "| space | fit: random configs | fit: unseen channels | fit: unseen shapes | fit: sizes between | "
        "evaluate on a table measured apart |",
        "|---|---|---|---|---|---|",
    ]
    for s in spaces:
        fit = s.get("fit")
        if fit:
            metrics = fit["metrics"]
            cells = [
                f"{pct(metrics[m]['within_10'])} ({metrics[m]['rows']}{unlearnt(metrics[m])})" if m in metrics else "-"
                for m in ("config", "unseen_channels", "unseen_shapes", "sizes_between")
            ]
            scored = fit.get("evaluate")
            lines.append(
                f"| {s['space']} | "
                + " | ".join(cells)
                + " | "
                + (f"{pct(scored['within_10'])} ({scored['rows']})" if scored else "-")
                + " |"
            )
    lines += [
        "",
        "## Where the error is (hwloop, random configs held out)",
        "",
        "| space | group | rows | ±5 % | ±10 % | MAPE |",
        "|---|---|---|---|---|---|",
    ]
    for s in spaces:
        for group, scores in s["splits"]["config"]["learners"]["hwloop"].items():
            if group != "learnt path":
                lines.append(error_row(s["space"], group, scores))
    lines += [
        "",
        "Each input size between measured ones held out alone (hwloop), per op family and input size:",
        "",
        "| space | group | rows | ±5 % | ±10 % | MAPE |",
        "|---|---|---|---|---|---|",
    ]
    for s in spaces:
        alone = s["splits"].get("each_size_between", {}).get("learners", {}).get("hwloop", {})
        for group, scores in alone.items():
            if group.startswith(("op ", "input ")):
                lines.append(error_row(s["space"], group, scores))
    lines += [
        "",
        "## Learning curve",
        "",
        "Random subsets of the training rows of the random-configs split (mean of three draws), scored on "
        "its held-out rows. nn-Meter trains on 3,000-10,000 samples per kernel type and reaches 99.0 % "
        "within ±10 % on a mobile CPU; LitePred adapts with 1,400-18,500 samples (99.3 %).",
        "",
        "*Adaptive* replays `hwloop collect --adaptive` on the measured rows (a first design of half the "
        "samples, then rounds where a bootstrap ensemble disagrees or errs), one draw.",
        "",
        "| space | samples | hwloop | hwloop, steady rows | hwloop, adaptive | random forest (nn-Meter) |",
        "|---|---|---|---|---|---|",
    ]
    for s in spaces:
        points: dict = {}
        for p in s["curve"]:
            points.setdefault(p["samples"], {}).setdefault(p["learner"], []).append(p)
        for samples, by in sorted(points.items()):
            mean = {name: sum(p["within_10"] for p in ps) / len(ps) for name, ps in by.items()}
            steady = [p["steady_within_10"] for p in by["hwloop"] if p["steady_within_10"] is not None]
            lines.append(
                f"| {s['space']} | {samples} | {pct(mean['hwloop'])} | "
                f"{pct(sum(steady) / len(steady) if steady else None)} | "
                f"{pct(mean.get('hwloop, adaptive'))} | {pct(mean['random forest (nn-Meter)'])} |"
            )
    lines += [
        "",
        "Learners: **hwloop** is `hwloop fit`'s model (a work model per path of the `default` rules, "
        "corrected by XGBoost); **lightgbm** the same with LightGBM in place of XGBoost; **xgboost, FLOPs "
        "margin** hwloop's features and booster starting from the vector FMAs instead of the work model; "
        "**work model** the work model alone; **random forest (nn-Meter)** nn-Meter's learner on its "
        "features (input size, channels, kernel, stride, FLOPs, parameters).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the study's folder (its results/ inside)")
    args = parser.parse_args()
    (args.folder / "README.md").write_text(page(args.folder))
    print(f"page → {args.folder / 'README.md'}")


if __name__ == "__main__":
    main()
