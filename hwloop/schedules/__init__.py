"""Schedule policies: how a layer's PrimFunc is scheduled before it is compiled.

A policy is part of every build and every table row: ``untuned`` is TVM's plain lowering (on a
GPU, one thread per output element),
``default`` applies hwloop's rule-based schedules (no search, ~0.2 s a layer), ``tuned:N`` is
MetaSchedule with a budget of N measured candidates, its database kept and reused, and
``transfer:N`` replays the ``tuned:N`` traces of a layer's anchor channel counts on the counts
between them, keeping the fastest of a few candidates.

Rows and predictors name the policies built on the ``default`` rules (``default`` itself, and
``transfer:N``, which keeps them as a candidate) with the revision of the rules: ``default@11``,
``transfer:64@11``. The revision rises whenever the rules generate other code, so rows timed under
earlier rules are kept but no longer mixed with new ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POLICY_HELP = (
    "default (rule-based schedules, no search), untuned (TVM's plain lowering), "
    "tuned:N (MetaSchedule, N trials, database reused) or transfer:N (tuned:N traces of "
    "anchor channel counts replayed on the counts between them)"
)
SEARCHED = ("tuned", "transfer")
REVISED = ("default", "transfer")  # built on the default rules: their names carry the rules' revision
DEFAULT_REVISION = 11


class PolicyError(ValueError):
    """A schedule policy name that hwloop does not know."""


@dataclass(frozen=True)
class Policy:
    kind: str
    trials: int = 0

    @property
    def name(self) -> str:
        """How rows, predictors and builds name the policy (``default@11``, ``untuned``, ``tuned:64``)."""
        base = f"{self.kind}:{self.trials}" if self.kind in SEARCHED else self.kind
        return f"{base}@{DEFAULT_REVISION}" if self.kind in REVISED else base

    def apply(self, mod, target, work_dir: Path, config=None):
        """``mod`` scheduled for ``target``; ``work_dir`` keeps what the policy learns (tuning records).

        ``mod`` is a single layer (one PrimFunc ``main``) or a whole model (a lowered Relax module,
        see :mod:`hwloop.graph`), whose PrimFuncs are each scheduled by the same rules.
        ``transfer`` schedules single layers: it needs the layer's ``config``.
        """
        if self.kind == "default":
            from .default import schedule

            return schedule(mod, target)
        if self.kind in SEARCHED and _on_gpu(target):
            raise PolicyError(
                f"{self.name}: hwloop's MetaSchedule search times candidates on this machine's CPU; "
                "schedule GPU targets with default or untuned"
            )
        if self.kind == "tuned":
            from .tuned import tune, tune_functions

            records = work_dir / "metaschedule" / str(self.trials)
            if is_model(mod):
                return tune_functions(mod, target, self.trials, records)
            return tune(mod, target, self.trials, records)
        if self.kind == "transfer":
            if config is None:
                raise PolicyError(
                    "transfer:N schedules single layers; use default, untuned or tuned:N for a whole model"
                )
            from .transfer import transfer

            return transfer(config, mod, target, self.trials, work_dir / "metaschedule" / str(self.trials))
        return _bind_gpu_threads(mod, target)


def _on_gpu(target) -> bool:
    from tvm.target import Target

    from .default import GPU_KINDS

    return target is not None and Target(target).kind.name in GPU_KINDS


def _bind_gpu_threads(mod, target):
    """``mod`` as it is for a CPU; for a GPU, one thread per output element (dlight's Fallback),
    the least a GPU kernel needs."""
    from tvm.s_tir import dlight as dl
    from tvm.target import Target

    target = Target(target)
    if not _on_gpu(target):
        return mod
    with target:
        return dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)


def is_model(mod) -> bool:
    """Whether ``mod`` is a whole model (it has a Relax function) rather than a single layer."""
    from tvm import relax

    return any(isinstance(func, relax.Function) for _, func in mod.functions_items())


def parse_policy(spec: str) -> Policy:
    """``"default"``, ``"untuned"``, ``"tuned:N"`` or ``"transfer:N"`` as a :class:`Policy`; a name
    with the rules' revision (``default@11``) is accepted when the revision is this hwloop's."""
    base, at, revision = spec.partition("@")
    match = re.fullmatch(r"(default|untuned)|(tuned|transfer):([1-9][0-9]*)", base)
    if not match or (at and (not revision.isdigit() or (match.group(1) or match.group(2)) not in REVISED)):
        raise PolicyError(f"unknown schedule policy {spec!r}: use {POLICY_HELP}")
    policy = Policy(match.group(1)) if match.group(1) else Policy(match.group(2), int(match.group(3)))
    if at and int(revision) != DEFAULT_REVISION:
        raise _earlier(spec, policy)
    return policy


def policy_of_rows(name: str) -> Policy:
    """The policy that rows, a predictor or a pruned model name ``name``; refused when it names
    rules of an earlier revision (a name without one is of revision 1), whose code this hwloop
    no longer builds."""
    policy = parse_policy(name)
    if policy.name != name:
        raise _earlier(name, policy)
    return policy


def unrevised(name: str) -> str:
    """A policy's name without the rules' revision (``default@11`` is ``default``)."""
    return name.partition("@")[0]


def _earlier(name: str, policy: Policy) -> PolicyError:
    return PolicyError(
        f"schedule {name!r}: timed under an earlier revision of the default rules; this hwloop "
        f"builds {policy.name!r}, so collect and fit again (`hwloop collect`, `hwloop fit`)"
    )
