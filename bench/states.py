"""The board's states: how a change of pace moves large and small layers, and whole models, apart.

    .venv/bin/python bench/states.py [--work bench-prune] [--spells 10] [--every 5] [--configs 24]
        [--model resnet20] [--input-shape 1,1,28,28]

Needs a work folder with a layer table and ``devices.yaml`` (``bench/prune.py`` makes one). Every
``--every`` minutes, one spell times ``--configs`` configs of the table's largest spell again
(spread over its latency range, as ``hwloop.pace.anchors`` picks them) and the model with its
copies thinned to 0.75, 0.5 and 0.25. Each spell prints the layers' pace against that spell (the
median over all configs, and over the smaller and the larger half of them), and the whole
models: the 0.75 copy's latency over the 0.25 copy's, and a line through the four models' timings
against the predicted sums of their layers (slope and intercept). A board whose large layers
gain more than its small ones when it runs faster shows it here; within one state, the figures
say how steady a predicted speed-up can be. Rows go to the work folder's tables, as any
measurement does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hwloop import tables
from hwloop.collect import collect
from hwloop.endtoend import ModelCase
from hwloop.prune.groups import thinned_cases
from hwloop.models import load_model
from hwloop.pace import anchors, spell_paces, spells
from hwloop.predictor import Predictor
from hwloop.prune.validate import side_by_side
from hwloop.registry import load_registry
from hwloop.schedules import parse_policy
from hwloop.space import trace_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench-prune"))
    parser.add_argument("--spells", type=int, default=10)
    parser.add_argument("--every", type=float, default=5.0, help="minutes from one spell's start to the next")
    parser.add_argument("--configs", type=int, default=24, help="table configs timed again in each spell")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input-shape", default="1,1,28,28")
    args = parser.parse_args()

    device, policy = load_registry(args.work).get("local"), parse_policy("default")
    tables_dir, cache = args.work / "tables", args.work / "cache"
    table = tables.read(tables_dir, "local")
    ok = table[(table.status == "ok") & (table.schedule == policy.name)]
    if ok.empty:
        raise SystemExit(f"{tables_dir}: no successful {policy.name} rows of device 'local'; run bench/prune.py first")
    ok = ok.assign(spell=spells(ok))
    reference = ok[ok.spell == spell_paces(ok).configs.idxmax()]
    levels = reference.groupby("config_id").latency_ms.min()
    probes = anchors(reference, args.configs)
    predictor = Predictor.fit(reference, "local", "default", evaluate=False)
    model, shape = load_model(args.model, tuple(int(d) for d in args.input_shape.split(",")))
    dense = ModelCase(args.model, model, shape)
    cases = [dense, *thinned_cases(dense, (0.75, 0.5, 0.25))]
    sums = np.array([predictor.predict([t.config for t in trace_layers(c.model, shape)]).sum() for c in cases])
    small, large = levels[[c.id for c in probes]].min(), levels[[c.id for c in probes]].max()
    print(f"{len(probes)} configs of the spell of {reference.measured_at.min():%Y-%m-%d %H:%M} "
          f"({small * 1e3:.1f}-{large * 1e3:.1f} us); models' predicted layer sums {np.round(sums, 4).tolist()} ms")
    print("time  | layers' pace: all, smaller half, larger half | models: 0.75/0.25, slope, intercept us, dense ms")
    for index in range(args.spells):
        start = time.monotonic()
        rows = collect(device, probes, policy, tables_dir, cache, force=True).rows
        timed = side_by_side(device, cases, policy, tables_dir, cache)
        fastest = {}
        for row in rows:
            if row["status"] == "ok" and row["config_id"] in levels.index:
                fastest[row["config_id"]] = min(row["latency_ms"], fastest.get(row["config_id"], np.inf))
        level = levels[list(fastest)].to_numpy()
        pace = np.array(list(fastest.values())) / level
        larger = level > np.median(level)
        failed = [f"{row['model']}: {row['stage']}: {row['error']}" for row in timed if row["status"] != "ok"]
        if failed:
            raise SystemExit("; ".join(failed))
        whole = np.array([row["latency_ms"] for row in timed])
        line_slope, intercept = np.polyfit(sums, whole, 1)
        print(f"{time.strftime('%H:%M')} | {np.median(pace):.3f}, {np.median(pace[~larger]):.3f}, "
              f"{np.median(pace[larger]):.3f} | "
              f"{whole[1] / whole[3]:.3f}, {line_slope:.3f}, {intercept * 1e3:.1f}, {whole[0]:.4f}", flush=True)
        if index + 1 < args.spells:
            time.sleep(max(0.0, args.every * 60 - (time.monotonic() - start)))


if __name__ == "__main__":
    main()
