"""Training, fine-tuning with knowledge distillation from the dense teacher, and accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

DENSE_LR = 0.05  # the dense baseline's learning rate (fine-tuning's is lower)
RECALIBRATION_BATCHES = 200  # batches that batch norms' statistics are estimated from after training


def distillation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float = 4.0,
    weight: float = 0.7,
) -> torch.Tensor:
    """Cross-entropy, mixed with ``weight`` of the KL divergence to the teacher's softened outputs."""
    loss = F.cross_entropy(logits, labels)
    if teacher_logits is None:
        return loss
    kd = (
        F.kl_div(
            F.log_softmax(logits / temperature, 1), F.softmax(teacher_logits / temperature, 1), reduction="batchmean"
        )
        * temperature**2
    )
    return (1 - weight) * loss + weight * kd


def train(
    model: nn.Module,
    loader: Iterable,
    epochs: int,
    lr: float = 0.05,
    teacher: nn.Module | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    extra_params: list[dict] | None = None,
    on_batch: Callable[[float], None] | None = None,
) -> None:
    """SGD with momentum and a cosine schedule; distils from ``teacher`` when given and adds
    ``penalty()`` to every batch's loss; ``extra_params`` are more optimiser parameter groups."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 5e-4}]
    optimiser = torch.optim.SGD(groups + (extra_params or []), lr=lr, momentum=0.9, nesterov=True)
    steps = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    if teacher is not None:
        teacher.eval()
    model.train()
    for _ in range(epochs):
        for inputs, labels in loader:
            with torch.no_grad():
                teacher_logits = teacher(inputs) if teacher is not None else None
            loss = distillation_loss(model(inputs), labels, teacher_logits)
            if penalty is not None:
                loss = loss + penalty()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            if on_batch:
                on_batch(float(loss.detach()))
    if epochs:
        recalibrate_norms(model, loader)
    model.eval()


@torch.no_grad()
def recalibrate_norms(model: nn.Module, loader: Iterable, batches: int = RECALIBRATION_BATCHES) -> None:
    """Re-estimate the batch norms' running statistics as plain averages over the first ``batches``
    of ``loader``, with the weights as trained. Their running averages trail the weights: with
    the momentum torchvision gives MobileNetV3 (0.01) or MNASNet (0.0003) they are still near their
    start after a few hundred steps, and the model evaluates at chance however well it trained."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.train()
    for (inputs, _), _ in zip(loader, range(batches)):
        model(inputs)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for inputs, labels in loader:
        correct += int((model(inputs).argmax(1) == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(1, total)


def majority_share(loader: Iterable) -> float:
    """The accuracy of always guessing ``loader``'s commonest label."""
    counts = torch.bincount(torch.cat([labels for _, labels in loader]))
    return float(counts.max() / counts.sum())


def learnt(accuracy: float, guess: float) -> bool:
    """Whether a model's ``accuracy`` beats always guessing the commonest label (``guess``) by at
    least a tenth of the way to perfect: a model below that learnt nothing to prune for."""
    return accuracy >= guess + 0.1 * (1 - guess)
