"""``hwloop devices check``: one small kernel built, checked against torch and timed on a device."""

from __future__ import annotations

from pathlib import Path

from .builder import BuildJob, build
from .layers import LayerConfig
from .registry import Device
from .runner import Runner
from .targets import resolve
from .transports import open_transport

SMOKE = LayerConfig("conv2d", in_channels=8, out_channels=8, input_h=16, input_w=16, kernel=3, padding=1)


def smoke_check(device: Device, cache_dir: Path) -> dict:
    """Build, check and time :data:`SMOKE` on ``device``; every stage's outcome in one record."""
    target = resolve(device.target, device.protocol.threads)
    built = build(BuildJob(SMOKE, target, "untuned", device.cc), cache_dir)
    report = {
        "device": device.name,
        "target": target,
        "config": SMOKE.id,
        "build_s": built.seconds,
        "ok": False,
        "stage": "build",
        "error": built.error,
    }
    if built.artifact is None:
        return report
    with open_transport(device) as transport:
        report["fingerprint"] = transport.fingerprint()
        measurement = Runner(transport, device.protocol, target).measure(SMOKE, built.artifact)
    report.update(
        ok=measurement.status == "ok",
        stage=measurement.stage,
        error=measurement.error,
        check_error=measurement.check_error,
        latency_ms=measurement.latency_ms,
        latency_cv=measurement.cv,
    )
    return report
