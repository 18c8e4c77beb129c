"""Turns docs/results/prune/results/*.json (written by ``python -m bench.prune``) into this folder's
README.md (one table per model and dataset) and a plot per file (accuracy against measured speed-up).

    .venv/bin/python docs/results/prune/make.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


INTRO = """# Pruning methods on the local device

What this study measures: each pruning method of `hwloop prune` (`latency`, `afcp`, `lws`, and the
baselines `flops` and `uniform`) at a few budgets, on a model trained on Fashion-MNIST (no download:
Debian's `dataset-fashion-mnist`), on the built-in `local` device with the `default` schedule rules.
For each pruned model: accuracy after a distilled fine-tuning, predicted and measured latency, the
speed-up measured against the dense model timed beside it, and the MACs reduction. The question is
how much faster a model pruned for measured latency runs than one pruned for FLOPs at the same
accuracy; the plots put every method's accuracy against its measured speed-up.

`bench/prune.py` writes `results/MODEL@DATASET.json` (the machine, the commit and the command with
the figures), keeping the outputs of earlier runs of other methods and budgets; this page is made
from that folder by `docs/results/prune/make.py`. The study's runs; each model's section below names
the machine, commit and command that wrote it, and a model without a section has not been run:

```bash
B="python -m bench.prune --train-samples 20000 --dense-epochs 8 --epochs 3 --passes 3"
$B --model resnet20 --work bench-prune --budgets 0.4,0.5 --flops-budgets 0.1,0.15,0.2,0.3,0.4 \\
   --methods latency,lws,flops:1
$B --model resnet20 --work bench-prune --budgets 0.25,0.3,0.35,0.4 --methods latency --proposals 16
$B --model bench/models.py:resnet20_x075 --work bench-prune-x075 --samples 200 --budgets 0.4,0.6 \\
   --flops-budgets 0.5,0.6 --methods latency,flops,uniform
$B --model resnet18 --work bench-prune-r18 --dense-epochs 6 --budgets 0.3,0.5 --flops-budgets 0.4,0.6,0.8 \\
   --methods latency,flops,uniform --revalidate 1 --thinned 0.9,0.8,0.7,0.6,0.5,0.4,0.25
$B --model mobilenetv2 --work bench-prune-mbv2 --train-samples 12000 --dense-epochs 6 --budgets 0.3,0.5 \\
   --flops-budgets 0.4,0.6,0.8 --methods latency,flops,uniform --revalidate 1
python docs/results/prune/make.py
```

ResNet-18's weights (43 MiB dense) span the last-level cache of the machine below as it is pruned,
so it was run twice: at `504f461`, with the whole-model calibration a line fitted on the dense
model and three thinned copies, and then in a new work folder with the same layer table, dense
baseline and settings at `6eedc97`, whose calibration charges the weights read from memory, fitted
on seven thinned copies ([predictor.md](../../predictor.md#whole-models)). The first run's file is
`results/resnet18@fashion-mnist@504f461.json`. Its `flops` rows are the same pruned models in both
runs: their measured latencies differ between the runs by more than the ±5 % asked of a prediction,
and so do some outputs' two validations, minutes apart, within a run (the work folder's model table
keeps every pass): a model whose weights are near the cache's size gets a share of it that moves
with each load and with the other tenants' work
([measurement.md](../../measurement.md#warm-or-cold-weights)).

Related benchmarks that print their findings (no results folder yet): `bench/proposals.py` (do short
fine-tunes rank plans of equal predicted latency as the full fine-tune does?) and
`bench/finetune_spread.py` (how far one fine-tuning's accuracy moves with the seed).
"""


def main() -> None:
    sections = [INTRO]
    for path in sorted((HERE / "results").glob("*.json")):
        run = json.loads(path.read_text())
        results = run["results"]
        if not results:
            continue
        plot = HERE / f"{path.stem.replace('@', '-')}.png"
        _plot(results, plot, f"{run['model']} on {run['dataset']}")
        machine = run["machine"]
        first = results[0]
        date = f", {run['date']}" if run.get("date") else ""
        sections += [
            f"\n## {run['model']} on {run['dataset']} at `{run['commit'][:7]}`\n",
            f"{machine['cpu_model']} (LLVM CPU {machine['llvm_cpu']}, {machine['cores']} cores){date}, "
            f"commit `{run['commit'][:12]}`, `{run['command']}`. Dense: accuracy {first['dense_accuracy']:.2%}, "
            f"measured {first['dense_ms']:.3f} ms, predicted {first['dense_predicted_ms']:.3f} ms.\n",
            "| method | budget | accuracy | predicted ms | measured ms | predicted vs measured | measured speed-up "
            "| predicted speed-up | MACs reduction |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            sections.append(
                f"| {r['method']} | {r['budget']:g} | {r['accuracy']:.2%} | {r['predicted_ms']:.3f} | "
                f"{_ms(r['measured_ms'])} | {_pct(r['predicted_error'])} | {_x(r['speedup'])} | "
                f"{_x(r.get('predicted_speedup'))} | {r['dense_macs'] / r['macs']:.2f}x |"
            )
        sections.append(_prediction_line(results))
        sections.append(f"\n![{run['model']}]({plot.name})\n")
    if len(sections) == 1:
        sections.append("No run is recorded in `results/` yet: the commands above write it.\n")
    (HERE / "README.md").write_text("\n".join(sections))
    print(f"wrote {HERE / 'README.md'}")


def _prediction_line(results: list[dict]) -> str:
    """How many pruned models' predicted latency lies within ±5 % of their measured latency."""
    errors = [r["predicted_error"] for r in results if r["predicted_error"] is not None]
    if not errors:
        return ""
    worst = max(errors, key=abs)
    within = sum(abs(e) <= 0.05 for e in errors)
    return (
        f"\nPredicted whole-model latency within ±5 % of the measured for {within} of {len(errors)} pruned "
        f"models (from {_pct(min(errors))} to {_pct(max(errors))}; the largest miss {_pct(worst)})."
    )


def _ms(value) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _pct(value) -> str:
    return f"{value:+.1%}" if value is not None else "-"


def _x(value) -> str:
    return f"{value:.2f}x" if value else "-"


def _plot(results: list[dict], path: Path, title: str) -> None:
    """Accuracy against measured speed-up: each pruned model against the dense model timed beside it."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.scatter([1.0], [results[0]["dense_accuracy"] * 100], marker="*", s=160, color="black", label="dense")
    for method in dict.fromkeys(r["method"] for r in results):
        rows = sorted((r for r in results if r["method"] == method and r["speedup"]), key=lambda r: r["speedup"])
        ax.plot([r["speedup"] for r in rows], [r["accuracy"] * 100 for r in rows], marker="o", label=method)
    if max((r["speedup"] or 1) for r in results) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("measured speed-up on the device (dense / pruned latency)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{title}: accuracy vs measured speed-up")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
