"""A board's pace: other tenants, heat and clocks make a board run everything faster or slower for
a while, and a table gathered over days mixes those paces.

Rows of one board (fingerprint) measured less than :data:`SPELL_GAP_S` apart form a *spell* and
share a pace. Configs measured in several spells give each spell's pace against the table's
largest spell; a collection that opens a new spell on a table re-measures a few *anchor* configs
already in it, so its pace is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .layers import LayerConfig

SPELL_GAP_S = 60.0  # rows of one board measured closer than this share its pace
ANCHORS = 12  # configs a new spell re-measures


def spells(rows: pd.DataFrame) -> pd.Series:
    """A number per row: rows of one board (fingerprint) each measured within :data:`SPELL_GAP_S`
    of the one before share it."""
    order = rows.assign(board=rows.fp_id.fillna("")).sort_values(["board", "measured_at"], kind="stable")
    gap = order.measured_at.diff().dt.total_seconds()
    new = (order.board != order.board.shift()) | gap.isna() | (gap > SPELL_GAP_S)
    return new.cumsum().reindex(rows.index)


def spell_paces(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per spell of ``rows`` (successful layer rows with ``spell``), indexed by spell: when
    it began (``start``), its ``configs``, how many of them other spells measured too (``shared``)
    and its ``pace``, its latency over that of the spell with the most configs (1.0 for that one,
    NaN for a spell no chain of shared configs links to it).

    In logs, each config's fastest row per spell is the config's level plus its spell's pace; both
    are fitted on the shared configs by alternating medians, so an anchor timed in a disturbance
    does not move a spell.
    """
    best = np.log(rows.groupby(["spell", "config_id"]).latency_ms.min()).rename("log").reset_index()
    summary = pd.DataFrame({"start": rows.groupby("spell").measured_at.min(),
                            "configs": best.groupby("spell").config_id.size()})
    shared = best[best.groupby("config_id").spell.transform("size") > 1]
    summary["shared"] = shared.groupby("spell").config_id.size().reindex(summary.index, fill_value=0)
    reference = summary.configs.idxmax()
    linked = {reference}
    while True:
        reached = set(shared.spell[shared.config_id.isin(shared.config_id[shared.spell.isin(linked)])])
        if reached <= linked:
            break
        linked |= reached
    shared = shared[shared.spell.isin(linked)]
    log_pace = pd.Series(0.0, index=sorted(linked))
    for _ in range(100 if len(linked) > 1 else 0):
        level = (shared.log - shared.spell.map(log_pace)).groupby(shared.config_id).median()
        fitted = (shared.log - shared.config_id.map(level)).groupby(shared.spell).median().reindex(log_pace.index)
        fitted = fitted.fillna(0.0) - fitted.get(reference, 0.0)
        done = np.allclose(fitted, log_pace, rtol=0.0, atol=1e-9)
        log_pace = fitted
        if done:
            break
    summary["pace"] = np.exp(log_pace).reindex(summary.index)
    return summary


def paced(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``rows`` (successful layer rows of one device and context) with ``latency_ms`` divided by
    their spell's pace (kept as measured in a spell nothing links to, and with a ``spell`` and
    ``pace`` column), and :func:`spell_paces` of them."""
    rows = rows.assign(spell=spells(rows))
    summary = spell_paces(rows)
    pace = rows.spell.map(summary.pace).fillna(1.0)
    return rows.assign(pace=pace, latency_ms=rows.latency_ms / pace), summary


def anchors(done: pd.DataFrame, count: int = ANCHORS) -> list[LayerConfig]:
    """``count`` configs of ``done`` (successful layer rows of one context) spread over its latency
    range: in each of ``count`` latency bins, the config measured in the most spells, so that
    sweeps keep re-measuring the same ones."""
    if done.empty:
        return []
    done = done.assign(spell=spells(done))
    per_config = done.groupby("config_id").agg(spells=("spell", "nunique"), latency=("latency_ms", "min"))
    per_config = per_config.sort_values("latency", kind="stable")
    bins = np.array_split(np.arange(len(per_config)), min(count, len(per_config)))
    chosen = [per_config.spells.iloc[b].idxmax() for b in bins]
    first = done.drop_duplicates("config_id").set_index("config_id")
    return [LayerConfig.from_dict(first.loc[config_id].to_dict()) for config_id in chosen]
