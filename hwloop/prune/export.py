"""A pruned model on disk: weights, the plan as JSON, and an ExportedProgram (ONNX too when the
``onnx`` package is installed). Reloading needs neither the pruning run nor unpickling: the
architecture is rebuilt from the model spec and the plan, the weights are read with
``torch.load(weights_only=True)``. A model given as a Python file is imported to rebuild it, which
runs that file's code: the plan records the file's SHA-256 and a changed file is refused.

Folder layout: ``plan.json``, ``pruned.pt`` and ``dense.pt`` (state dicts), ``pruned.pt2``
(``torch.export``), ``pruned.onnx`` (optional).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from ..models import ModelError, file_sha256, load_model, model_file
from .groups import ChannelGroups, PruneError

FORMAT = "hwloop-prune/1"


def save(out: Path, pruned: nn.Module, dense: nn.Module, record: dict) -> list[Path]:
    """Write the folder; ``record`` holds at least ``model``, ``input_shape``, ``num_classes`` and
    ``groups`` (``{name: {"dense": n, "kept": k}}``, and optionally ``"channels"``: the dense
    indices of the kept channels, ascending). A model ``torch.export`` cannot export still gets
    its weights and plan; ``plan.json``'s ``export_errors`` says why. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(pruned.state_dict(), out / "pruned.pt")
    torch.save(dense.state_dict(), out / "dense.pt")
    files = [out / "plan.json", out / "pruned.pt", out / "dense.pt"]
    example = torch.zeros(tuple(record["input_shape"]))
    record = {"format": FORMAT, **record, "export_errors": {}}
    try:
        torch.export.save(torch.export.export(pruned.eval(), (example,)), out / "pruned.pt2")
        files.append(out / "pruned.pt2")
    except Exception as exc:  # noqa: BLE001 - the weights and plan stand without it; the plan says why
        record["export_errors"]["pruned.pt2"] = _reason(exc)
    if importlib.util.find_spec("onnx") is not None:
        try:
            torch.onnx.export(pruned.eval(), (example,), out / "pruned.onnx", dynamo=True)
            files.append(out / "pruned.onnx")
        except Exception as exc:  # noqa: BLE001
            record["export_errors"]["pruned.onnx"] = _reason(exc)
    (out / "plan.json").write_text(json.dumps(record, indent=2) + "\n")
    return files


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def read_plan(out: Path) -> dict:
    """``plan.json`` of an output folder, checked; :class:`PruneError` names the file and field."""
    path = out / "plan.json"
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise PruneError(
            f"{path}: cannot read: {exc.strerror or exc} (is {out} an output folder of `hwloop prune`?)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise PruneError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PruneError(f"{path}: format: expected {FORMAT!r}")
    for key, kind in (("model", str), ("input_shape", list), ("num_classes", int), ("groups", dict)):
        if not isinstance(record.get(key), kind):
            raise PruneError(f"{path}: {key}: missing or not a {kind.__name__}")
    for name, counts in record["groups"].items():
        if not isinstance(counts, dict) or not isinstance(counts.get("kept"), int):
            raise PruneError(f"{path}: groups.{name}.kept: missing or not an integer")
        channels = counts.get("channels")
        if channels is not None and not _indices(channels, counts["kept"], counts.get("dense")):
            raise PruneError(
                f"{path}: groups.{name}.channels: expected {counts['kept']} distinct ascending "
                f"indices of the dense model's {counts.get('dense')} channels"
            )
    return record


def _indices(channels, kept: int, dense) -> bool:
    """Whether ``channels`` lists ``kept`` ascending channel indices below ``dense``."""
    return (
        isinstance(channels, list)
        and len(channels) == kept
        and isinstance(dense, int)
        and all(isinstance(i, int) for i in channels)
        and channels == sorted(set(channels))
        and (not channels or 0 <= channels[0] and channels[-1] < dense)
    )


def load(out: Path) -> tuple[nn.Module, nn.Module, dict]:
    """The pruned model, the dense model (both in eval mode) and the plan record of an output folder."""
    record = read_plan(out)
    shape = tuple(record["input_shape"])
    pruned, dense = _build(record, out), _build(record, out)
    groups = ChannelGroups(pruned, shape)
    try:
        groups.apply_plan({name: counts["kept"] for name, counts in record["groups"].items()})
    except PruneError as exc:
        raise PruneError(f"{out / 'plan.json'}: {exc}") from exc
    _load_weights(pruned, out / "pruned.pt")
    _load_weights(dense, out / "dense.pt")
    return pruned.eval(), dense.eval(), record


def _build(record: dict, out: Path) -> nn.Module:
    """The dense model of a plan; a model file is imported (which runs its code) only when its
    SHA-256 is the one the plan recorded."""
    file = model_file(record["model"])
    try:
        if file is not None:
            recorded, actual = record.get("model_sha256"), file_sha256(file)
            if recorded != actual:
                raise PruneError(
                    f"{out / 'plan.json'}: model_sha256: {file} has changed since the plan was made "
                    f"(SHA-256 {actual[:12]}…, the plan recorded "
                    f"{recorded[:12] + '…' if isinstance(recorded, str) else 'none'}); "
                    "a changed file may be another model, and importing it runs its code"
                )
        model, _ = load_model(
            record["model"], tuple(record["input_shape"]), record["num_classes"] if file is None else None
        )
    except ModelError as exc:
        raise PruneError(f"{out / 'plan.json'}: model: {exc}") from exc
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except FileNotFoundError as exc:
        raise PruneError(f"{path}: missing") from exc
    except (RuntimeError, ValueError, TypeError) as exc:
        raise PruneError(f"{path}: does not fit the plan's model: {str(exc).splitlines()[0]}") from exc
