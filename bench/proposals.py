"""Do short fine-tunes rank plans of equal predicted latency by what the full fine-tune makes of
them? The proposals of ``hwloop prune --proposals N`` (see ``hwloop.prune.proposals``), ranked by
successive halving of short passes, then each fine-tuned in full with a few seeds.

    .venv/bin/python bench/proposals.py [--work bench-prune] [--model resnet20] [--budget 0.4] [--proposals 12]
        [--seeds 0,1] [--epochs 3] [--dense-epochs 8] [--train-samples 20000]

Reads the predictor's tables and the dense baseline of a bench/prune.py work folder (run that
first, with the same model, dense epochs and training images). Prints, per proposal, its predicted
latency, held-out accuracy after its last short pass and how many passes it had, test accuracy
after the full fine-tuning with each seed and their mean, and the rank correlation between the
ranking and the means.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import pandas as pd
import torch

from hwloop import tables
from hwloop.predictor import Predictor
from hwloop.prune import MIN_RATIO, pipeline, proposals
from hwloop.prune.cost import PredictedLatency
from hwloop.prune.data import first_batches, load_data
from hwloop.prune.groups import ChannelGroups, pruned_copy
from hwloop.prune.importance import scores
from hwloop.prune.train import evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-prune"))
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--proposals", type=int, default=12)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    folder = args.work / "tables"
    predictor = Predictor.fit(
        tables.read(folder, "local"), "local", "default", evaluate=False, models=tables.read_models(folder, "local")
    )
    data = load_data("fashion-mnist", 128, args.train_samples)
    dense, _ = pipeline.dense_baseline(args.model, data, args.dense_epochs, 0, args.work / "cache")
    cost = PredictedLatency(ChannelGroups(copy.deepcopy(dense), data.input_shape), predictor)
    importance = scores(cost.groups, "l1")
    proposed = proposals.propose(cost, importance, cost.target(args.budget), args.proposals, 0, MIN_RATIO)
    ranked = proposals.ranked(
        dense, data.input_shape, proposed, importance, first_batches(data.train, proposals.BATCHES), 0, args.lr
    )

    names = [g.name for g in cost.groups.groups]
    print("groups: " + " ".join(names))
    print(
        "| proposal | predicted ms | held-out after its passes | passes | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | channels kept |"
    )
    print("|---|---|---|---|" + "---|" * (len(seeds) + 2))
    means = []
    for index, proposal in enumerate(ranked):
        accuracy = []
        for seed in seeds:
            model = pruned_copy(dense, data.input_shape, importance, proposal.plan)
            torch.manual_seed(seed)
            train(
                model,
                load_data("fashion-mnist", 128, args.train_samples, seed=seed).train,
                args.epochs,
                lr=args.lr,
                teacher=dense,
            )
            accuracy.append(evaluate(model, data.test))
        means.append(statistics.mean(accuracy))
        print(
            f"| {index + 1} | {proposal.predicted_ms:.4f} | {proposal.accuracy:.2%} | {proposal.passes} | "
            + " | ".join(f"{a:.2%}" for a in accuracy)
            + f" | {means[-1]:.2%} | "
            + " ".join(str(proposal.plan[name]) for name in names)
            + " |",
            flush=True,
        )
    print(
        f"\nSpearman rank correlation, ranking against mean: "
        f"{pd.Series(range(len(ranked), 0, -1)).corr(pd.Series(means).rank()):.2f}"
    )


if __name__ == "__main__":
    main()
