"""One pruning run: dense baseline (trained once, cached), a method's plan under the budget
(checked on the board when one is given), structural pruning, fine-tuning with distillation from
the dense model, and the output folder."""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models import ModelError, file_sha256, load_model, model_file
from ..schedules import policy_of_rows
from . import MIN_RATIO, afcp, baselines, export, lws, proposals
from .allocator import allocate
from .board import Board, correct
from .cost import Macs, PredictedLatency
from .data import Data, first_batches
from .groups import ChannelGroups, PruneError
from .importance import scores
from .train import DENSE_LR, evaluate, majority_share, train

METHODS = ("latency", "afcp", "lws", "flops", "uniform")


@dataclass
class Settings:
    """What ``hwloop prune`` does, with its command line's defaults."""

    method: str = "latency"
    budget: float | str = 0.5
    epochs: int = 2
    dense_epochs: int = 5
    dense_lr: float = DENSE_LR
    search_epochs: int = 1
    criterion: str = "l1"
    lr: float = 0.01
    seed: int = 0
    min_ratio: float = MIN_RATIO
    # latency, flops, uniform: counts move by multiples of this; 0: the cost's alignment step for the
    # baselines, any count for the allocator (it prices ragged counts)
    round_to: int = 0
    # latency: plans proposed and ranked by short fine-tunes (see :mod:`.proposals`); 1: the allocator's alone
    proposals: int = 1


@dataclass
class Result:
    model: nn.Module
    dense: nn.Module
    record: dict
    files: list[Path] = field(default_factory=list)


def model_spec(spec: str) -> str:
    """A model spec that still resolves from another folder (a file's path made absolute)."""
    file = model_file(spec)
    if file is None:
        return spec
    return f"{file.resolve()}:{spec.rpartition(':')[2]}"


def dense_baseline(
    spec: str, data: Data, epochs: int, seed: int, cache_dir: Path, progress=None, lr: float = DENSE_LR
) -> tuple[nn.Module, float]:
    """The dense model trained on ``data`` for ``epochs`` at learning rate ``lr``, from the cache
    when trained before, and its accuracy."""
    model = build(spec, data)
    key = {
        "model": model_spec(spec),
        "dataset": data.name,
        "train": len(data.train.dataset),
        "input_shape": list(data.input_shape),
        "classes": data.num_classes,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
    }
    if model_file(spec) is not None:
        key["source"] = file_sha256(model_file(spec))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    weights, meta = cache_dir / "dense" / f"{digest}.pt", cache_dir / "dense" / f"{digest}.json"
    if weights.is_file() and meta.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model.eval(), json.loads(meta.read_text())["accuracy"]
    torch.manual_seed(seed)
    with _task(progress, f"dense baseline ({epochs} epochs)", epochs * len(data.train)) as advance:
        train(model, data.train, epochs, lr=lr, on_batch=advance)
    accuracy = evaluate(model, data.test)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps({**key, "accuracy": accuracy}) + "\n")
    return model.eval(), accuracy


def run(
    spec: str,
    data: Data,
    predictor,
    settings: Settings,
    out: Path | None,
    cache_dir: Path,
    progress=None,
    dense: tuple[nn.Module, float] | None = None,
    board: Board | None = None,
) -> Result:
    """Prune ``spec`` for ``predictor``'s device to ``settings.budget`` (a fraction of the dense
    predicted latency, or ``"3.2ms"``) and fine-tune; write ``out`` when given. With ``board``,
    plans are timed on its device before fine-tuning and corrected until they meet the budget as
    measured (see :mod:`hwloop.prune.board`)."""
    if settings.method not in METHODS:
        raise PruneError(f"method: unknown {settings.method!r}; methods are {', '.join(METHODS)}")
    if settings.proposals > 1 and settings.method != "latency":
        raise PruneError(f"proposals: only the latency method proposes plans, not {settings.method}")
    policy_of_rows(predictor.schedule)  # a predictor of earlier rules is refused before any training
    dense_model, dense_accuracy = dense or dense_baseline(
        spec, data, settings.dense_epochs, settings.seed, cache_dir, progress, settings.dense_lr
    )

    probe = PredictedLatency(ChannelGroups(copy.deepcopy(dense_model), data.input_shape), predictor)
    target = probe.target(settings.budget)
    torch.manual_seed(settings.seed)
    importance = (
        None
        if settings.method in ("afcp", "lws")
        else scores(probe.groups, settings.criterion, first_batches(data.train, 4))
    )
    ranked = _ranked(settings, dense_model, probe, importance, target, data, progress) if settings.proposals > 1 else []
    factors = ranked[0].factors if ranked else None

    def plan_at(target: float) -> _Planned:
        torch.manual_seed(settings.seed)
        model = copy.deepcopy(dense_model).eval()
        groups = ChannelGroups(model, data.input_shape)
        latency, macs = PredictedLatency(groups, predictor), Macs(groups)
        planned = _Planned(
            model,
            groups,
            latency,
            macs,
            *_plan(settings, groups, latency, macs, target, data, dense_model, importance, progress, factors),
        )
        groups.apply(planned.keep)
        return planned

    checked = None
    if board is None:
        chosen = plan_at(target)
    else:
        with _task(progress, f"checking plans on {board.device.name}", None):
            checked = correct(
                plan_at,
                lambda p: p.latency.total(p.plan),
                lambda p: board.time_plan(
                    dense_model,
                    p.model,
                    data.input_shape,
                    f"{Path(spec).name}@{data.name}",
                    settings.method,
                    predictor.schedule,
                ),
                target,
                lambda dense_ms: probe.target(settings.budget, dense=dense_ms),
                board.rounds,
                board.tolerance,
            )
        chosen = checked.planned
    model, groups, latency, macs, plan = chosen.model, chosen.groups, chosen.latency, chosen.macs, chosen.plan
    with _task(
        progress, f"fine-tune ({settings.epochs} epochs, distilled)", settings.epochs * len(data.train)
    ) as advance:
        train(model, data.train, settings.epochs, lr=settings.lr, teacher=dense_model, on_batch=advance)
    record = {
        "model": model_spec(spec),
        **({"model_sha256": file_sha256(model_file(spec))} if model_file(spec) else {}),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "dataset": data.name,
        "device": predictor.device,
        "schedule": predictor.schedule,
        "method": settings.method,
        "budget": settings.budget,
        "target_ms": target,
        "epochs": settings.epochs,
        "lr": settings.lr,
        "dense_epochs": settings.dense_epochs,
        "dense_lr": settings.dense_lr,
        "dense_predicted_ms": latency.total(groups.dense),
        "predicted_ms": latency.total(plan),
        "dense_macs": macs.total(groups.dense) * 1e6,
        "macs": macs.total(plan) * 1e6,
        "dense_accuracy": dense_accuracy,
        "guess_accuracy": majority_share(data.test),
        "accuracy": evaluate(model, data.test),
        "groups": {
            g.name: {"dense": g.size, "kept": plan[g.name], "channels": sorted(map(int, chosen.keep[g.name]))}
            for g in groups.groups
        },
        **chosen.extra,
    }
    if ranked:
        record["proposals"] = [
            {"accuracy": p.accuracy, "passes": p.passes, "predicted_ms": p.predicted_ms, "plan": p.plan} for p in ranked
        ]
    if checked is not None:
        record["board"] = checked.record(board.device.name)
    files = export.save(out, model, dense_model, record) if out is not None else []
    return Result(model.eval(), dense_model, record, files)


@dataclass
class _Planned:
    """A method's plan on a fresh copy of the dense model: the copy, pruned to the plan, the dense
    model's groups and costs, the plan, the kept channels of each group and what the method adds to
    the record."""

    model: nn.Module
    groups: ChannelGroups
    latency: PredictedLatency
    macs: Macs
    plan: dict[str, int]
    keep: dict[str, list[int]]
    extra: dict


def _ranked(
    settings: Settings,
    dense: nn.Module,
    cost: PredictedLatency,
    importance: dict[str, torch.Tensor],
    target: float,
    data: Data,
    progress,
) -> list[proposals.Proposal]:
    """``settings.proposals`` plans at ``target``, ranked by successive halving of short fine-tunes (best first)."""
    with _task(progress, f"proposing {settings.proposals} plans", None):
        proposed = proposals.propose(
            cost, importance, target, settings.proposals, settings.seed, settings.min_ratio, settings.round_to or 1
        )
    batches = first_batches(data.train, proposals.BATCHES)
    with _task(
        progress, f"ranking {len(proposed)} proposals (successive halving)", proposals.passes(len(proposed), batches)
    ) as advance:
        return proposals.ranked(
            dense, data.input_shape, proposed, importance, batches, settings.seed, settings.lr, on_batch=advance
        )


def _plan(
    settings: Settings,
    groups: ChannelGroups,
    latency: PredictedLatency,
    macs: Macs,
    target: float,
    data: Data,
    teacher: nn.Module,
    importance: dict[str, torch.Tensor] | None,
    progress,
    factors: dict[str, float] | None = None,
):
    """The method's plan, the kept channels of each group, and what the method adds to the record;
    ``importance``: the dense model's (unused by afcp and lws, which search their own); ``factors``
    scale each group's importance in the allocator (the proposal ranked first)."""
    method = settings.method
    if method in ("afcp", "lws"):
        search = afcp.search if method == "afcp" else lws.search
        with _task(
            progress, f"{method} search ({settings.search_epochs} epochs)", settings.search_epochs * len(data.train)
        ) as advance:
            return search(
                groups,
                latency,
                target,
                data.train,
                teacher,
                settings.search_epochs,
                settings.min_ratio,
                on_batch=advance,
            )
    step = settings.round_to or latency.step
    if method == "uniform":
        plan = baselines.uniform(groups, latency, target, settings.min_ratio, step)
    elif method == "flops":
        macs_target = target / latency.total(groups.dense) * macs.total(groups.dense)
        plan = baselines.global_ranking(groups, macs, importance, macs_target, settings.min_ratio, step)
    else:
        weighted = proposals.scaled(importance, factors) if factors else importance
        with _task(progress, "allocating channels", None) as advance:
            plan = allocate(
                groups,
                latency,
                weighted,
                target,
                settings.min_ratio,
                on_step=lambda _: advance(),
                round_to=settings.round_to or 1,
            )
    return plan, groups.top(importance, plan), {"criterion": settings.criterion}


def build(spec: str, data: Data) -> nn.Module:
    """The untrained model of ``spec`` for ``data``'s input shape (and class count, for a built-in),
    run once on zeros of that shape so that an input it cannot take is refused before training."""
    try:
        model, _ = load_model(spec, data.input_shape, data.num_classes if model_file(spec) is None else None)
    except ModelError as exc:
        raise PruneError(str(exc)) from exc
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(data.input_shape))
    except Exception as exc:
        raise PruneError(
            f"{spec}: input shape {tuple(data.input_shape)}: running the model raised {type(exc).__name__}: {exc}"
        ) from exc
    return model


@contextmanager
def _task(progress, description: str, total: int | None):
    """An ``advance`` callback on a task of ``progress`` (a rich Progress), or a no-op without one."""
    if progress is None:
        yield lambda *_: None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda *_: progress.advance(task)
    finally:
        progress.stop_task(task)
