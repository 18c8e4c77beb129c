"""What a device was when it was measured: CPU, cores, clocks, temperature, load, and its NVIDIA GPU
where it has one (``nvidia-smi``; a Jetson's GPU clock from devfreq and its ``nvpmodel`` mode).

Standard library only, so the same file runs unchanged on a board: ``python3 fingerprint.py [CPU]``
prints the fingerprint as JSON.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
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


# nvidia-smi's names of the GPU facts a row keeps, in the order of GPU_FIELDS
NVIDIA_SMI_QUERY = "name,driver_version,clocks.sm,clocks.mem,power.limit"
GPU_FIELDS = ("gpu_name", "gpu_driver", "gpu_sm_mhz", "gpu_mem_mhz", "gpu_power_limit_w", "gpu_clocks_pinned")
JETSON_GPUS = ("gpu", "gp10b", "gv11b", "ga10b", "gb10b")  # devfreq names of Jetson GPUs (*.gpu, 17000000.ga10b...)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # [N/A], [Not Supported]


def parse_nvidia_smi(output: str) -> dict:
    """The GPU facts of the first line of ``nvidia-smi --query-gpu=NVIDIA_SMI_QUERY
    --format=csv,noheader,nounits`` (GPU 0), a field it does not report as None."""
    fields = [field.strip() for field in (output.splitlines() or [""])[0].split(",")]
    if len(fields) != 5 or not fields[0]:
        return {}
    name, driver, sm, mem, power = fields
    return {
        "gpu_name": name,
        "gpu_driver": None if driver.startswith("[") else driver,
        "gpu_sm_mhz": _number(sm),
        "gpu_mem_mhz": _number(mem),
        "gpu_power_limit_w": _number(power),
    }


def _nvidia_smi() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        result = subprocess.run(
            ["nvidia-smi", "-i", "0", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else {}


def jetson_gpu(devfreq: str = "/sys/class/devfreq") -> dict:
    """A Jetson's GPU from its devfreq node: its name, clock, and whether the clock is pinned at
    its maximum (what ``jetson_clocks`` does)."""
    for path in sorted(glob.glob(f"{devfreq}/*")):
        name = os.path.basename(path)
        if name.rsplit(".", 1)[-1] not in JETSON_GPUS:
            continue
        hz = {key: _read(f"{path}/{key}") for key in ("cur_freq", "min_freq", "max_freq")}
        if not all(value and value.isdigit() for value in hz.values()):
            continue
        return {
            "gpu_name": name.rsplit(".", 1)[-1],
            "gpu_sm_mhz": round(int(hz["cur_freq"]) / 1e6, 1),
            "gpu_clocks_pinned": hz["min_freq"] == hz["max_freq"],
        }
    return {}


def gpu() -> dict:
    """The GPU facts of this machine (every field of :data:`GPU_FIELDS`, None where unknown):
    nvidia-smi's, and a Jetson's devfreq node for what nvidia-smi does not report there."""
    found = {**jetson_gpu(), **{key: value for key, value in _nvidia_smi().items() if value is not None}}
    return {field: found.get(field) for field in GPU_FIELDS}


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
        **gpu(),
    }


if __name__ == "__main__":
    print(json.dumps(collect(int(sys.argv[1]) if len(sys.argv) > 1 else 0)))
