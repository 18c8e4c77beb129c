"""Channel importance criteria, per group, from Torch-Pruning's group importances.

Each criterion scores every channel of every group of the dense model; scores are normalised to a
mean of 1 within a group, then weighted by how many layers the group spans (a channel of a residual
stream feeds every block of its stage), so that groups compare. ``taylor`` needs gradients: :func:`scores`
accumulates them over a few batches first.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch_pruning as tp
from torch import nn

from .groups import ChannelGroups, PruneError

CRITERIA = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "geometric_median": lambda: tp.importance.FPGMImportance(p=2),
}


def scores(
    groups: ChannelGroups, criterion: str, batches: Iterable | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Per-channel importance of each group under ``criterion`` (one of :data:`CRITERIA`).

    ``batches`` (``(inputs, labels)`` pairs) are needed for ``taylor``; a criterion with nothing to
    measure in a group (no BatchNorm for ``bn_scale``), or that Torch-Pruning cannot compute there
    (``geometric_median`` on a group feeding a grouped conv), falls back to ``l1`` there.
    """
    if criterion not in CRITERIA:
        raise PruneError(f"importance: unknown criterion {criterion!r}; criteria are {', '.join(CRITERIA)}")
    model = groups.model
    if criterion == "taylor":
        if batches is None:
            raise PruneError("importance: taylor needs data batches to take gradients on")
        _accumulate_gradients(model, batches, device)
    importance, fallback = CRITERIA[criterion](), CRITERIA["l1"]()
    result = {}
    with torch.no_grad() if criterion != "taylor" else torch.enable_grad():
        for group in groups.groups:
            fn = tp.prune_linear_out_channels if isinstance(group.root, nn.Linear) else tp.prune_conv_out_channels
            tp_group = groups.graph.get_pruning_group(group.root, fn, list(range(group.size)))
            try:
                score = importance(tp_group)
            except RuntimeError:
                if criterion != "geometric_median":
                    raise
                score = None  # Torch-Pruning's geometric median fails on the inputs of a grouped conv
            if score is None or not torch.isfinite(score).all():
                score = fallback(tp_group)
            layers = len(group.producers) + len(group.consumers) + len(group.depthwise)
            result[group.name] = score.detach().float().cpu() * max(1.0, layers / 2)
    if criterion == "taylor":
        model.zero_grad(set_to_none=True)
    return result


def _accumulate_gradients(model: nn.Module, batches: Iterable, device) -> None:
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    for inputs, labels in batches:
        loss = nn.functional.cross_entropy(model(inputs.to(device)), labels.to(device))
        loss.backward()
    model.train(was_training)
