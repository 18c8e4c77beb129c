"""Spending board time where the predictor needs it, in the spirit of nn-Meter's adaptive sampling.

A first design covers every layer shape with a spread of channel counts, those at a step of the
``default`` rules first (where one channel more opens another vector or tile, or one fewer closes
one: latency jumps there, see :mod:`hwloop.predictor.rules`). Each later round fits a
small bootstrap ensemble on what is measured and picks the candidates where the ensemble
disagrees most, and those near a measured config the ensemble gets wrong by more than 10 %
(scored on the members that did not see it). :func:`learning_curve` replays either strategy on
rows already measured, to show accuracy against the number of samples.

A new device whose predictor starts from devices already measured (:mod:`hwloop.predictor.fewshot`)
needs other measurements: its sources know the shape of each layer's latency, the new device tells
their scale. Its first design (:func:`transfer_design`) takes both ends of each layer shape's range
(its slowest and fastest config, as the sources predict them), then fills the widest gaps in
predicted latency, preferring configs at a step of the new device's vector width and where the
sources disagree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..layers import LayerConfig
from . import rules
from .evaluation import scores
from .features import from_frame, shape_key
from .latency import LatencyModel, vector_unit

MEMBERS = 4
WRONG = 0.10
STEP = 1.1


def frame_of(configs: list[LayerConfig]) -> pd.DataFrame:
    """Candidate configs as a frame with the table's config columns and ``config_id``."""
    return pd.DataFrame([{**c.to_dict(), "config_id": c.id} for c in configs])


def at_step(frame: pd.DataFrame, lanes: int, registers: int) -> np.ndarray:
    """Whether a config sits at a step of the rules' work: one channel more (in or out) makes its
    loops' vector multiply-adds grow over ``STEP`` times faster than the channel count (another
    vector or tile opens), or one channel fewer did."""
    cols = from_frame(frame)
    depthwise = cols["op"] == "depthwise_conv2d"

    def fmas(d_in: int, d_out: int) -> np.ndarray:
        both = np.maximum(cols["in_channels"] + d_in + d_out, 1)  # a depthwise conv's channels and groups move together
        return rules.quantities(
            dict(
                cols,
                in_channels=np.where(depthwise, both, np.maximum(cols["in_channels"] + d_in, 1)),
                out_channels=np.where(depthwise, both, np.maximum(cols["out_channels"] + d_out, 1)),
                groups=np.where(depthwise, both, cols["groups"]),
            ),
            lanes,
            registers,
        )["vector_fmas"]

    here, step = fmas(0, 0), np.zeros(len(frame), dtype=bool)
    for column, shift in (("in_channels", (1, 0)), ("out_channels", (0, 1))):
        count = np.asarray(cols[column], dtype=float)
        up, down = fmas(*shift), fmas(*(-d for d in shift))
        step |= up / here > (count + 1) / count * STEP
        step |= (count > 1) & (here / down > count / np.maximum(count - 1, 1) * STEP)
    return step


def initial_design(candidates: pd.DataFrame, k: int, lanes: int, registers: int, seed: int = 0) -> pd.DataFrame:
    """``k`` candidates, round-robin over layer shapes, configs at a step of the rules first in each."""
    rng = np.random.default_rng(seed)
    order = candidates.assign(
        _p=rng.random(len(candidates)) - at_step(candidates, lanes, registers), _s=shape_key(candidates)
    )
    order = order.sort_values("_p")
    order["_rank"] = order.groupby("_s").cumcount()
    return order.sort_values(["_rank", "_p"]).head(k).drop(columns=["_p", "_s", "_rank"])


def transfer_design(
    candidates: pd.DataFrame, k: int, priors: list[LatencyModel], lanes: int, registers: int
) -> pd.DataFrame:
    """``k`` candidates to measure first on a device that ``priors`` (source models retargeted to
    it, :func:`hwloop.predictor.fewshot.retarget`) predict: each shape's slowest config (slowest
    shapes first), then each shape's fastest, then one by one the candidate farthest in predicted
    log latency from those chosen of its shape, plus half a unit at a step of the rules and the
    sources' disagreement (the spread of their log predictions, each source's own pace removed)."""
    cols = from_frame(candidates)
    logs = np.array([np.log(model.predict_columns(cols)) for model in priors])
    logs -= logs.mean(axis=1, keepdims=True)
    predicted, spread = logs.mean(axis=0), logs.std(axis=0)
    shape = shape_key(candidates).to_numpy()
    bonus = 0.5 * at_step(candidates, lanes, registers) + spread
    chosen: list[int] = []
    for end in (np.argmax, np.argmin):
        ends = [np.flatnonzero(shape == s)[end(predicted[shape == s])] for s in np.unique(shape)]
        chosen += [i for i in sorted(ends, key=lambda i: -predicted[i]) if i not in chosen]
    chosen = chosen[:k]
    while len(chosen) < min(k, len(candidates)):
        gap = np.full(len(candidates), np.inf)
        for i in chosen:
            mine = shape == shape[i]
            gap[mine] = np.minimum(gap[mine], np.abs(predicted[mine] - predicted[i]))
        gap[chosen] = -np.inf
        chosen.append(int(np.argmax(np.where(np.isfinite(gap), gap + bonus, -np.inf))))
    return candidates.iloc[chosen]


def choose(
    candidates: pd.DataFrame,
    measured: pd.DataFrame,
    k: int,
    seed: int = 0,
    train: Callable[[pd.DataFrame, int], LatencyModel] = LatencyModel.train,
) -> pd.DataFrame:
    """The ``k`` unmeasured candidates the next round should measure (see the module's docstring);
    ``measured`` are table rows (of one target), ``train`` fits the ensemble's members."""
    rng = np.random.default_rng(seed)
    lanes, registers = vector_unit(measured.target.iloc[0])
    pool = candidates[~candidates.config_id.isin(measured.config_id)].reset_index(drop=True)
    if len(pool) <= k:
        return pool
    n = len(measured)
    preds, oob_sum, oob_count = [], np.zeros(n), np.zeros(n)
    for member in range(MEMBERS):
        picks = rng.integers(0, n, n)
        member_model = train(measured.iloc[picks], seed + member)
        preds.append(np.log(member_model.predict_frame(pool)))
        unseen = np.ones(n, dtype=bool)
        unseen[picks] = False
        oob_sum[unseen] += member_model.predict_frame(measured[unseen])
        oob_count[unseen] += 1
    score = np.std(preds, axis=0) + 0.05 * at_step(pool, lanes, registers)
    seen = oob_count > 0
    error = np.abs(oob_sum[seen] / oob_count[seen] / measured.latency_ms.to_numpy()[seen] - 1)
    wrong = measured[seen][error > WRONG]
    if len(wrong):
        pool_shape, wrong_shape = shape_key(pool).to_numpy(), shape_key(wrong).to_numpy()
        for shape, cin, cout in zip(wrong_shape, wrong.in_channels, wrong.out_channels):
            score += (
                (pool_shape == shape)
                & (np.abs(pool.in_channels - cin) <= lanes)
                & (np.abs(pool.out_channels - cout) <= lanes)
            ).to_numpy()
    return pool.iloc[np.argsort(-score, kind="stable")[:k]]


def adaptive_collect(
    device,
    configs: list[LayerConfig],
    policy,
    tables_dir: Path,
    cache_dir: Path,
    budget: int,
    rounds: int = 4,
    seed: int = 0,
    on_round: Callable[[int, int], None] | None = None,
    force: bool = False,
    on_row: Callable[[dict], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    sources: list[LatencyModel] | None = None,
):
    """Measure at most ``budget`` new configs of ``configs`` on ``device`` (each in every pass of its
    protocol) in ``rounds`` rounds, all in one measuring session: a first design (half the budget),
    then where the predictor is uncertain or wrong. Rows already in the table count as measured.
    With ``sources`` (latency models of devices already measured), the first design is
    :func:`transfer_design`'s and the later rounds' predictors are few-shot transfers from them.
    Returns one :class:`hwloop.collect.Summary` for all rounds (``error`` set when the device was
    given up)."""
    from .. import tables
    from ..collect import Summary, collect
    from ..session import Session
    from .fewshot import retarget, transfer_from

    start = time.perf_counter()
    candidates = frame_of(list(dict.fromkeys(configs)))
    total = Summary(device.name, policy.name, planned=min(budget, len(candidates)) * device.protocol.passes, skipped=0)
    train = (lambda rows, member: transfer_from(sources, rows, member)) if sources else LatencyModel.train
    with Session(device, policy, tables_dir, on_wait=on_wait, cache_dir=cache_dir) as session:
        lanes, registers = vector_unit(session.context.target_json)
        design_size = max(budget // 2, 1)
        design = (
            transfer_design(candidates, design_size, [retarget(s, lanes, registers) for s in sources], lanes, registers)
            if sources
            else None
        )
        for round_index in range(rounds):
            table = tables.read(tables_dir, device.name, where={"status": "ok", **session.context.same()})
            measured = table[table.config_id.isin(candidates.config_id)].drop_duplicates("config_id")
            if round_index == 0:
                total.skipped = len(measured)
            left = budget - len({row["config_id"] for row in total.rows})
            if left <= 0:
                break
            if design is not None and round_index == 0:
                chosen = design[~design.config_id.isin(measured.config_id)].head(left)
            elif len(measured) < (1 if sources else 8):
                fresh = candidates[~candidates.config_id.isin(measured.config_id)]
                chosen = initial_design(fresh, min(left, design_size), lanes, registers, seed)
            else:
                chosen = choose(
                    candidates,
                    measured.reset_index(drop=True),
                    -(-left // (rounds - round_index)),
                    seed + round_index,
                    train,
                )
            if chosen.empty:
                continue
            if on_round:
                on_round(round_index, len(chosen))
            batch = [LayerConfig.from_dict(row) for row in chosen.to_dict("records")]
            summary = collect(device, batch, policy, tables_dir, cache_dir, force, on_row=on_row, session=session)
            total.rows += summary.rows
            if summary.error:
                total.error = summary.error
                break
    total.wall_s = time.perf_counter() - start
    return total


def learning_curve(rows: pd.DataFrame, test: np.ndarray, sizes: list[int], adaptive: bool, seed: int = 0) -> list[dict]:
    """Scores on ``rows[test]`` of predictors trained on growing subsets of the other rows, chosen
    at random or by the adaptive sampler (replayed: a chosen row's measured latency is revealed)."""
    pool, held = rows[~test].reset_index(drop=True), rows[test].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    order = pool.iloc[rng.permutation(len(pool))]
    curve, chosen = [], pool.iloc[:0]
    for size in sorted(s for s in sizes if s <= len(pool)):
        if not adaptive:
            chosen = order.head(size)
        elif chosen.empty:
            chosen = initial_design(pool, size, *vector_unit(rows.target.iloc[0]), seed)
        else:
            picks = choose(pool, chosen, size - len(chosen), seed + size)
            chosen = pd.concat([chosen, pool[pool.config_id.isin(picks.config_id)]])
        model = LatencyModel.train(chosen, seed)
        curve.append({"samples": int(len(chosen)), **scores(held.latency_ms.to_numpy(), model.predict_frame(held))})
    return curve
