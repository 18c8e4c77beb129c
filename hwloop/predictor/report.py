"""Pictures of a predictor on its device's table: a small HTML page and its PNG plots.

* ``scatter.png``: predicted against measured latency for rows predicted by a model that did not
  see them (k-fold by config), with the ±10 % band;
* ``staircase.png``: measured latency against out-channels for a few layer shapes, with the
  predictor's line over every count in between;
* ``learning_curve.png``: share within ±10 % of held-out rows against samples, random and adaptive;
* ``trials.png`` (rows measured in trials): each trial's latency over its row's, against the row's
  latency, with the ±5 and ±10 % bands: how far the table's measurements repeat.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..layers import LayerConfig
from .evaluation import BANDS, splits
from .features import shape_key
from .latency import LatencyModel
from .model import Predictor
from .sampling import learning_curve
from .selection import Selection

FOLDS = 4
STAIRCASES = 4


def out_of_fold(rows: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Each row's latency predicted by a latency model trained on the other folds."""
    fold = np.random.default_rng(seed).permutation(len(rows)) % FOLDS
    predicted = np.empty(len(rows))
    for k in range(FOLDS):
        test = fold == k
        if test.any() and (~test).any():
            predicted[test] = LatencyModel.train(rows[~test], seed).predict_frame(rows[test])
    return predicted


def write_report(predictor: Predictor, chosen: Selection, out_dir: Path, seed: int = 0) -> Path:
    """Plots and ``index.html`` for ``predictor`` on ``chosen`` (its device's selected rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{predictor.device} · {predictor.schedule}"
    rows = chosen.rows

    measured, predicted = rows.latency_ms.to_numpy(), out_of_fold(rows, seed)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for op in sorted(rows.op.unique()):
        mask = (rows.op == op).to_numpy()
        ax.scatter(measured[mask], predicted[mask], s=12, label=op, alpha=0.8)
    line = np.geomspace(measured.min() * 0.8, measured.max() * 1.25, 50)
    ax.plot(line, line, "k-", lw=0.8)
    ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.25, label="±10 %")
    ax.set(
        xscale="log", yscale="log", xlabel="measured ms", ylabel=f"predicted ms ({FOLDS}-fold held out)", title=title
    )
    ax.legend(fontsize=8)
    _save(fig, out_dir / "scatter.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, layer in _staircases(rows):
        counts = np.arange(1, int(layer.out_channels.max() * 1.25) + 1)
        config = layer.iloc[0]
        dense = predictor.latency_grid(_config(config), [int(config.in_channels)], counts)[0]
        (line,) = ax.plot(counts, dense, lw=1, label=name)
        ax.scatter(layer.out_channels, layer.latency_ms, s=14, color=line.get_color())
    ax.set(
        yscale="log", xlabel="out channels", ylabel="latency ms", title=f"{title}: measured (dots), predicted (line)"
    )
    ax.legend(fontsize=7)
    _save(fig, out_dir / "staircase.png")

    test = splits(rows, seed)["config"]
    pool = int((~test).sum())
    sizes = sorted({int(s) for s in np.geomspace(min(10, pool), pool, 6)})
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for adaptive in (False, True):
        curve = learning_curve(rows, test, sizes, adaptive, seed)
        ax.plot(
            [p["samples"] for p in curve],
            [100 * p["within_10"] for p in curve],
            "o-",
            label="adaptive" if adaptive else "random",
        )
    ax.set(xlabel="measured samples", ylabel="held-out rows within ±10 % (%)", ylim=(0, 100), title=title)
    ax.legend()
    _save(fig, out_dir / "learning_curve.png")

    trials = _trials_plot(chosen.passes, out_dir / "trials.png", title)
    index = out_dir / "index.html"
    index.write_text(_page(predictor, rows, measured, predicted, trials))
    return index


def _trials_plot(passes: pd.DataFrame, path: Path, title: str) -> bool:
    """``trials.png`` (see the module's docstring); False, and no file, when no row has trials."""
    import matplotlib.pyplot as plt

    rows = passes[passes.trial_latencies_ms.map(lambda t: t is not None and len(t) > 0)]
    if rows.empty:
        return False
    x = np.concatenate([np.full(len(t), latency) for t, latency in zip(rows.trial_latencies_ms, rows.latency_ms)])
    y = np.concatenate([np.asarray(t) / latency for t, latency in zip(rows.trial_latencies_ms, rows.latency_ms)])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=6, alpha=0.5)
    for band, style in ((0.05, ":"), (0.10, "--")):
        for side in (1 - band, 1 + band):
            ax.axhline(side, color="grey", lw=0.8, ls=style)
    ax.set(xscale="log", xlabel="row latency (ms)", ylabel="trial / row latency", title=f"{title}: trials")
    _save(fig, path)
    return True


def _staircases(rows: pd.DataFrame):
    """The layer shapes (with their most common in-channels) measured at the most out-channel counts."""
    keyed = rows.assign(_shape=shape_key(rows) + ":in" + rows.in_channels.astype(str))
    sizes = keyed.groupby("_shape").out_channels.nunique().sort_values(ascending=False)
    return [
        (name, keyed[keyed._shape == name].sort_values("out_channels"))
        for name in sizes.index[:STAIRCASES]
        if sizes[name] >= 3
    ]


def _config(row):
    return LayerConfig.from_dict(row.to_dict())


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _page(predictor: Predictor, rows: pd.DataFrame, measured, predicted, trials: bool) -> str:
    error = np.abs(predicted / measured - 1)
    cells = "".join(f"<td>{100 * np.mean(error <= b / 100):.1f} %</td>" for b in BANDS)
    held_out = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['rows']}</td>"
        + "".join(f"<td>{100 * s[f'within_{b}']:.1f} %</td>" for b in BANDS)
        + f"<td>{100 * s['mape']:.1f} %</td></tr>"
        for name, s in predictor.meta.get("metrics", {}).items()
    )
    meta = predictor.meta
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hwloop predictor · {html.escape(predictor.device)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}</style>
</head><body>
<h1>Latency predictor · {html.escape(predictor.device)}</h1>
<p>schedule <b>{html.escape(meta["schedule"])}</b>, protocol {html.escape(meta["protocol_id"])},
{meta.get("rows", "?")} training rows, xgboost {html.escape(meta["xgboost_version"])},
{len(rows)} configs plotted.</p>
<table><tr><th>held out</th><th>rows</th>{"".join(f"<th>±{b} %</th>" for b in BANDS)}<th>MAPE</th></tr>
{held_out}
<tr><td>{FOLDS}-fold (plotted)</td><td>{len(rows)}</td>{cells}<td>{100 * np.mean(error):.1f} %</td></tr></table>
<h2>Predicted vs measured</h2><img src="scatter.png" alt="predicted vs measured">
<h2>Latency vs out-channels</h2><img src="staircase.png" alt="staircase">
<h2>Learning curve</h2><img src="learning_curve.png" alt="learning curve">
{'<h2>How far the measurements repeat</h2><img src="trials.png" alt="trials">' if trials else ""}
</body></html>
"""
