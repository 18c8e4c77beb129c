"""What a device was when it was measured: CPU, cores, clocks, temperature, load.

Standard library only, so the same file runs unchanged on a board: ``python3 fingerprint.py [CPU]``
prints the fingerprint as JSON.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mhz(path: str) -> float | None:
    value = _read(path)
    return round(int(value) / 1000.0, 1) if value and value.isdigit() else None


def _max_temperature_c() -> float | None:
    temps = []
    for path in glob.glob("/sys/class/thermal/thermal_zone*/temp"):
        value = _read(path)
        if value and value.lstrip("-").isdigit():
            temps.append(int(value) / 1000.0)
    return max(temps) if temps else None


def _jetson_power_mode() -> str | None:
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0].removeprefix("NV Power Mode:").strip() if lines else None


def collect(cpu: int = 0) -> dict:
    """The fingerprint of this machine, with clocks read from CPU ``cpu``."""
    cpufreq = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
    stable = {
        "cpu_model": _cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 0,
        "kernel": platform.release(),
        "hostname": socket.gethostname(),
    }
    return {
        "id": hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12],
        **stable,
        "governor": _read(f"{cpufreq}/scaling_governor"),
        "freq_mhz": _mhz(f"{cpufreq}/scaling_cur_freq"),
        "max_freq_mhz": _mhz(f"{cpufreq}/cpuinfo_max_freq"),
        "temp_c": _max_temperature_c(),
        "load1": os.getloadavg()[0],
        "power_mode": _jetson_power_mode(),
    }


if __name__ == "__main__":
    print(json.dumps(collect(int(sys.argv[1]) if len(sys.argv) > 1 else 0)))
