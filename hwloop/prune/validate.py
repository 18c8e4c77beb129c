"""A pruned model checked on its board: the dense and the pruned model compiled whole with the
schedule policy of the predictor that priced the plan, checked against torch and timed end to end.
Every row goes to the device's model table, where they also calibrate the predictor's whole-model
figure; with several passes, each model's fastest counts. Besides the latency, the report compares
the speed-ups (dense / pruned), predicted and measured: a ratio of two models timed side by side
moves less than either latency when the whole board runs slower for a while."""

from __future__ import annotations

from pathlib import Path

from ..endtoend import ModelCase, measure_models
from ..registry import Device
from ..schedules import Policy, policy_of_rows
from . import export


def validate(device: Device, out: Path, tables_dir: Path, cache_dir: Path, on_row=None) -> dict:
    """Measure the output folder ``out`` of a pruning run on ``device``; the report's ``ok`` is False
    when a measurement failed or the pruned model is not faster than the dense one."""
    pruned, dense, record = export.load(out)
    shape = tuple(record["input_shape"])
    name = f"{Path(record['model']).name}@{record.get('dataset', 'data')}"
    cases = [
        ModelCase(f"{name}:dense", dense, shape),
        ModelCase(f"{name}:{record.get('method', 'pruned')}", pruned, shape),
    ]
    policy = policy_of_rows(record.get("schedule", "default"))
    dense_row, pruned_row = side_by_side(device, cases, policy, tables_dir, cache_dir, on_row)
    report = {
        "device": device.name,
        "model": str(out),
        "schedule": policy.name,
        "predicted_for": record.get("device"),
        "method": record.get("method"),
        "budget": record.get("budget"),
        "dense_ms": dense_row["latency_ms"],
        "measured_ms": pruned_row["latency_ms"],
        "dense_predicted_ms": record.get("dense_predicted_ms"),
        "predicted_ms": record.get("predicted_ms"),
        "accuracy": record.get("accuracy"),
        "dense_accuracy": record.get("dense_accuracy"),
    }
    return judged(
        report,
        [f"{row['model']}: {row['stage']}: {row['error']}" for row in (dense_row, pruned_row) if row["status"] != "ok"],
    )


def judged(report: dict, failures: list[str]) -> dict:
    """``report`` with what its latencies (``dense_ms``, ``measured_ms``, ``predicted_ms``,
    ``dense_predicted_ms``) say: measured and predicted speed-up, the prediction's error on the pruned
    and on the dense model (both off alike: the device ran at another pace than its tables), and
    ``failures`` (the measurements' own) with a pruned model not faster than the dense one added."""
    report["failures"] = list(failures)
    measured = not failures
    report["speedup"] = report["dense_ms"] / report["measured_ms"] if measured else None
    report["predicted_speedup"] = (
        report["dense_predicted_ms"] / report["predicted_ms"]
        if report["dense_predicted_ms"] and report["predicted_ms"]
        else None
    )
    report["predicted_error"] = (
        report["predicted_ms"] / report["measured_ms"] - 1 if measured and report["predicted_ms"] else None
    )
    report["dense_predicted_error"] = (
        report["dense_predicted_ms"] / report["dense_ms"] - 1 if measured and report["dense_predicted_ms"] else None
    )
    if measured and report["measured_ms"] >= report["dense_ms"]:
        report["failures"].append(
            f"the pruned model measured {report['measured_ms']:.4f} ms, not faster than "
            f"the dense model's {report['dense_ms']:.4f} ms"
        )
    report["ok"] = not report["failures"]
    return report


def side_by_side(
    device: Device, cases: list[ModelCase], policy: Policy, tables_dir: Path, cache_dir: Path, on_row=None
) -> list[dict]:
    """Each of ``cases`` measured again on ``device``, their passes interleaved: each one's fastest row."""
    rows = measure_models(device, cases, policy, tables_dir, cache_dir, force=True, on_row=on_row)
    return [fastest([r for r in rows if r["model"] == case.name]) for case in cases]


def fastest(rows: list[dict]) -> dict:
    """A model's fastest successful row of its passes, or its first row when none succeeded."""
    ok = [r for r in rows if r["status"] == "ok"]
    return min(ok, key=lambda r: r["latency_ms"]) if ok else rows[0]
