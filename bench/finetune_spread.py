"""How much of an accuracy difference between pruned models is one fine-tuning's spread: each
output folder's plan is applied again to its dense model and fine-tuned with other seeds.

    .venv/bin/python bench/finetune_spread.py bench-prune/pruned/resnet20-latency-board-0.4 ... \\
        [--seeds 1,2,3] [--train-samples 20000] [--lr 0.01]

Each plan keeps the same channels as its run (``plan.json``'s ``channels``; in older outputs, each
group's top channels by the run's importance criterion). Only outputs of ``latency``, ``flops`` and
``uniform`` can be re-made: ``afcp`` and ``lws`` also fold their gates into the weights. A seed sets the
shuffling of the training images and
the fine-tuning's random state; the epochs and distillation are the run's. Prints each seed's
test accuracy, and the mean and range per output beside the run's own.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from hwloop.prune import export
from hwloop.prune.data import first_batches, load_data
from hwloop.prune.groups import ChannelGroups
from hwloop.prune.importance import scores
from hwloop.prune.train import evaluate, train

REMADE = ("latency", "flops", "uniform")


def refinetuned(dense: torch.nn.Module, record: dict, seed: int, train_samples: int | None, lr: float) -> float:
    """Test accuracy of ``record``'s plan applied to ``dense`` (its output folder's dense model) and
    fine-tuned with ``seed``."""
    data = load_data(record["dataset"], train_samples=train_samples, seed=seed)
    model = copy.deepcopy(dense)
    groups = ChannelGroups(model, data.input_shape)
    groups.apply(kept_channels(record, groups, data))
    torch.manual_seed(seed)
    train(model, data.train, record["epochs"], lr=lr, teacher=dense)
    return evaluate(model, data.test)


def kept_channels(record: dict, groups: ChannelGroups, data) -> dict[str, list[int]]:
    """The dense indices each group kept: as recorded, or (older outputs) re-ranked by the run's criterion."""
    if all("channels" in g for g in record["groups"].values()):
        return {name: g["channels"] for name, g in record["groups"].items()}
    importance = scores(groups, record["criterion"], first_batches(data.train, 4))
    return groups.top(importance, {name: g["kept"] for name, g in record["groups"].items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", type=Path, help="output folders of `hwloop prune` or bench/prune.py")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--train-samples", type=int, default=None, help="as in the runs that made the outputs")
    parser.add_argument("--lr", type=float, default=0.01, help="as in the runs that made the outputs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for out in args.outputs:
        method = export.read_plan(out).get("method")
        if method not in REMADE:
            raise SystemExit(
                f"{out / 'plan.json'}: method: {method} chooses its channels in a search; "
                f"only {', '.join(REMADE)} outputs can be re-made"
            )
    print("| output | run's accuracy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range |")
    print("|---|---|" + "---|" * (len(seeds) + 2))
    for out in args.outputs:
        _, dense, record = export.load(out)
        accuracy = [refinetuned(dense, record, seed, args.train_samples, args.lr) for seed in seeds]
        print(
            f"| {out.name} | {record['accuracy']:.2%} | "
            + " | ".join(f"{a:.2%}" for a in accuracy)
            + f" | {statistics.mean(accuracy):.2%} | {max(accuracy) - min(accuracy):.2%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
