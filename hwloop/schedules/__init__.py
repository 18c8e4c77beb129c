"""Schedule policies: how a layer's PrimFunc is scheduled before it is compiled.

A policy is part of every build and every table row: ``untuned`` is TVM's plain lowering,
``default`` applies hwloop's rule-based schedules (no search, ~0.2 s a layer) and ``tuned:N`` is
MetaSchedule with a budget of N measured candidates, its database kept and reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POLICY_HELP = ("default (rule-based schedules, no search), untuned (TVM's plain lowering) "
               "or tuned:N (MetaSchedule, N trials, database reused)")


class PolicyError(ValueError):
    """A schedule policy name that hwloop does not know."""


@dataclass(frozen=True)
class Policy:
    kind: str
    trials: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.trials}" if self.kind == "tuned" else self.kind

    def apply(self, mod, target, work_dir: Path):
        """``mod`` scheduled for ``target``; ``work_dir`` keeps what the policy learns (tuning records)."""
        if self.kind == "default":
            from .default import schedule

            return schedule(mod, target)
        if self.kind == "tuned":
            from .tuned import tune

            return tune(mod, target, self.trials, work_dir / "metaschedule" / str(self.trials))
        return mod


def parse_policy(spec: str) -> Policy:
    """``"default"``, ``"untuned"`` or ``"tuned:N"`` as a :class:`Policy`."""
    if spec in ("default", "untuned"):
        return Policy(spec)
    match = re.fullmatch(r"tuned:([1-9][0-9]*)", spec)
    if match:
        return Policy("tuned", int(match.group(1)))
    raise PolicyError(f"unknown schedule policy {spec!r}: use {POLICY_HELP}")
