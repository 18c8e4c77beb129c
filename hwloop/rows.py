"""Table rows: what one measurement of a layer or a whole model records, with its full context."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from . import __version__, tables
from .builder import Built, tvm_version
from .layers import LayerConfig
from .registry import Device
from .runner import Measurement, estimator
from .schedules import Policy
from .targets import canonical, resolve


@dataclass(frozen=True)
class Context:
    """What every row of one device's collection shares: the device, the schedule policy, the
    resolved target and the protocol (as JSON and as a short hash, the row's ``protocol_id``)."""

    device: Device
    policy: Policy
    target: dict
    protocol: str
    protocol_id: str

    @classmethod
    def of(cls, device: Device, policy: Policy) -> "Context":
        unrelated = {"passes", "batch", "retake_scattered", "sentinel"}  # a row's meaning does not depend on them
        if not device.protocol.flush:
            unrelated.add("flush")  # left out when off: tables timed warm keep their protocol_id
        if device.protocol.statistic == "median":
            unrelated.add("statistic")  # left out at the median: tables timed before the field keep their protocol_id
        protocol = device.protocol.model_dump_json(exclude=unrelated)
        return cls(
            device,
            policy,
            resolve(device.target, device.protocol.threads),
            protocol,
            hashlib.sha256(protocol.encode()).hexdigest()[:12],
        )

    @property
    def target_json(self) -> str:
        return canonical(self.target)

    def same(self) -> dict:
        """The columns and values that select this context's rows of a table (:func:`hwloop.tables.read`)."""
        return {"schedule": self.policy.name, "target": self.target_json, "protocol_id": self.protocol_id}


def layer_row(context: Context, config: LayerConfig, built: Built, m: Measurement, fp: dict) -> dict:
    """One layer-table row: the config, the measurement and everything needed to know what it means."""
    return {
        "config_id": config.id,
        **config.to_dict(),
        "macs": config.macs,
        **measurement_fields(context, m, fp),
        "build_s": built.seconds,
        "build_cached": built.cached,
    }


def model_row(
    context: Context,
    name: str,
    model_id: str,
    input_shape: tuple[int, ...],
    layers: list[dict],
    m: Measurement,
    build_s: float,
    fp: dict,
) -> dict:
    """One model-table row: the model's name, key, input shape and layers, and the measurement."""
    return {
        "model_id": model_id,
        "model": name,
        "input_shape": json.dumps(list(input_shape)),
        "layers": json.dumps(layers),
        "macs": sum(LayerConfig.from_dict(layer).macs for layer in layers),
        **measurement_fields(context, m, fp),
        "build_s": build_s,
        "build_cached": False,
    }


def measurement_fields(context: Context, m: Measurement, fp: dict) -> dict:
    """The fields every measurement row has, of layers and of whole models alike."""
    return {
        "measurement_id": tables.new_measurement_id(),
        "device": context.device.name,
        "status": m.status,
        "stage": m.stage,
        "error": m.error,
        "latency_ms": m.latency_ms,
        "latency_mean_ms": m.mean_ms,
        "latency_std_ms": m.std_ms,
        "latency_min_ms": m.min_ms,
        "latency_cv": m.cv,
        "latencies_ms": m.latencies_ms,
        "repeats": len(m.latencies_ms),
        "trials": len(m.trials),
        "trial_latencies_ms": m.trial_ms,
        "trial_spread": m.spread,
        "disturbed": m.disturbed,
        "quiet": m.quiet if m.trials else None,
        "sentinel_ms": m.sentinel_ms,
        "estimator": estimator(context.device.protocol) if m.trials else None,
        "check_error": m.check_error,
        "schedule": context.policy.name,
        "target": context.target_json,
        "cc": context.device.cc,
        "protocol": context.protocol,
        "protocol_id": context.protocol_id,
        "tvm_version": tvm_version(),
        "hwloop_version": __version__,
        "measure_s": m.seconds,
        "timing_s": m.timing_s,
        "measured_at": datetime.now(timezone.utc),
        **{f"fp_{key}": value for key, value in fp.items()},
    }
