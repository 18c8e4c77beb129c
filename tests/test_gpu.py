"""NVIDIA GPUs, on a host without one: whole models scheduled by the GPU rules, compiled for ``nvptx``
and exported as a library whose PTX NVIDIA's assembler accepts; the local GPU found through
``nvidia-smi``; the GPU facts a row keeps."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from test_cross_compile import AARCH64_CC, EM_AARCH64, JETSON_GPU, PTXAS, elf_machine, embedded_ptx
from torch import nn
from tvm import tirx

from hwloop import fingerprint, tables
from hwloop.builder import build_lowered
from hwloop.fingerprint import GPU_FIELDS, jetson_gpu, parse_nvidia_smi
from hwloop.graph import relax_module
from hwloop.models import InvertedResidual, load_model
from hwloop.registry import load_registry, local_gpu, nvidia_target
from hwloop.schedules import parse_policy
from hwloop.targets import runtime_device_type

SERVER_GPU = {"kind": "nvptx", "mcpu": "sm_90", "mtriple": "nvptx64-nvidia-cuda", "host": {"kind": "llvm"}}
EM_X86_64 = 62

CONTRACTIONS = ("fused_conv2d", "fused_matmul", "fused_NT_matmul")  # whole models' conv and linear PrimFuncs


def small_mobilenet() -> nn.Module:
    """A MobileNetV2 cut short: its stem, a block without expansion, an expanding strided block with
    a residual one after it, pooling and a classifier."""
    stem = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
    blocks = [InvertedResidual(16, 16, 1, 1), InvertedResidual(16, 24, 2, 6), InvertedResidual(24, 24, 1, 6)]
    return nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


CASES = {
    "resnet20-sm_90": (lambda: load_model("resnet20"), SERVER_GPU, None, EM_X86_64),
    "mobilenet-sm_87": (lambda: (small_mobilenet(), (1, 3, 32, 32)), JETSON_GPU, AARCH64_CC, EM_AARCH64),
}


def kernels_assembled(ptx: str, arch: str, tmp_path: Path) -> list[str]:
    """The entry functions ptxas compiled from ``ptx`` for ``arch``."""
    (tmp_path / "model.ptx").write_text(ptx)
    assembled = subprocess.run(
        [PTXAS, f"-arch={arch}", "-v", tmp_path / "model.ptx", "-o", tmp_path / "model.cubin"],
        capture_output=True,
        text=True,
    )
    assert assembled.returncode == 0, assembled.stderr
    return re.findall(rf"Compiling entry function '(\w+)' for '{arch}'", assembled.stdout + assembled.stderr)


@pytest.mark.parametrize("case", CASES)
def test_whole_models_compile_for_nvidia_gpus_and_their_ptx_assembles(case, cache_dir, tmp_path):
    make, target, cc, machine = CASES[case]
    model, shape = make()
    library = tmp_path / "model.so"
    error = build_lowered(relax_module(model.eval(), shape), target, "default", cc, cache_dir, library)
    assert error is None, error
    assert elf_machine(str(library)) == machine
    ptx = embedded_ptx(library.read_bytes())
    arch = target["mcpu"]
    assert f".target {arch}" in ptx and ".extern" not in ptx and ".visible .func" not in ptx
    entries = re.findall(r"\.visible \.entry (\w+)\(", ptx)
    layers = [
        gvar.name_hint
        for gvar, func in relax_module(model, shape).functions_items()
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(CONTRACTIONS)
    ]
    assert len(layers) >= 3 and all(any(e.startswith(f"{name}_kernel") for e in entries) for name in layers)
    assert sorted(kernels_assembled(ptx, arch, tmp_path)) == sorted(entries)
    assert ".shared" in ptx and "bar.sync" in ptx  # dlight's tiled schedules, not one thread per element only


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """Put an ``nvidia-smi`` answering ``answer`` (and exiting ``status``) first on PATH."""

    def install(answer: str, status: int = 0) -> None:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        script = folder / "nvidia-smi"
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(answer)}\nexit {status}\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        local_gpu.cache_clear()

    yield install
    local_gpu.cache_clear()


def test_the_local_gpu_is_a_built_in_device_when_nvidia_smi_lists_one(nvidia_smi, tmp_path):
    nvidia_smi("NVIDIA H200, 9.0")
    device = load_registry(tmp_path).get("local-gpu")
    assert device.transport == "local" and device.source is None
    assert device.target == {
        "kind": "nvptx",
        "mcpu": "sm_90",
        "mtriple": "nvptx64-nvidia-cuda",
        "host": {"kind": "llvm"},
    }
    assert "NVIDIA H200" in device.description
    assert runtime_device_type(device.target) == 2  # kDLCUDA: kernels run on the GPU


@pytest.mark.parametrize(
    "answer, status",
    [
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9),
        ("Orin (nvgpu), [N/A]", 0),
        ("", 0),
    ],
)
def test_no_local_gpu_without_a_gpu_and_its_compute_capability(nvidia_smi, tmp_path, answer, status):
    nvidia_smi(answer, status)
    assert list(load_registry(tmp_path).devices) == ["local"]


def test_compute_capabilities_name_their_sm():
    assert nvidia_target("8.7")["mcpu"] == "sm_87" and nvidia_target(" 12.0")["mcpu"] == "sm_120"
    with pytest.raises(ValueError, match="compute capability"):
        nvidia_target("[N/A]")


def test_nvidia_smi_answers_become_gpu_facts():
    assert parse_nvidia_smi("NVIDIA H200, 580.65.06, 1980, 3201, 700.00\n") == {
        "gpu_name": "NVIDIA H200",
        "gpu_driver": "580.65.06",
        "gpu_sm_mhz": 1980.0,
        "gpu_mem_mhz": 3201.0,
        "gpu_power_limit_w": 700.0,
    }
    partial = parse_nvidia_smi("Orin (nvgpu), [N/A], [N/A], [N/A], [Not Supported]")
    assert partial["gpu_name"] == "Orin (nvgpu)" and not any(v for k, v in partial.items() if k != "gpu_name")
    assert parse_nvidia_smi("") == {} and parse_nvidia_smi("No devices were found") == {}


@pytest.mark.parametrize("pinned", [True, False])
def test_a_jetson_gpu_is_read_from_devfreq(tmp_path, pinned):
    for node, hz in {
        "17000000.ga10b": (1020000000, 1020000000 if pinned else 306000000, 1020000000),
        "3d00000.host1x": (1, 1, 1),
    }.items():
        (tmp_path / node).mkdir()
        for name, value in zip(("cur_freq", "min_freq", "max_freq"), hz):
            (tmp_path / node / name).write_text(f"{value}\n")
    assert jetson_gpu(str(tmp_path)) == {"gpu_name": "ga10b", "gpu_sm_mhz": 1020.0, "gpu_clocks_pinned": pinned}


def test_every_fingerprint_field_has_a_column_in_both_tables():
    fields = fingerprint.collect()
    assert set(GPU_FIELDS) <= set(fields)
    for schema in (tables.SCHEMA, tables.MODEL_SCHEMA):
        assert {f"fp_{key}" for key in fields} <= set(schema.names)


@pytest.mark.parametrize("policy", ["tuned:8", "transfer:8"])
def test_searched_policies_are_refused_for_gpu_targets(policy, tmp_path):
    import tvm

    from hwloop.kernels import prim_module
    from hwloop.layers import LayerConfig
    from hwloop.schedules import PolicyError

    config = LayerConfig("conv2d", 8, 8, 8, 8, kernel=3, padding=1)
    with pytest.raises(PolicyError, match="GPU targets with default or untuned"):
        parse_policy(policy).apply(prim_module(config), tvm.target.Target(SERVER_GPU), tmp_path, config)


def test_the_server_finds_the_cuda_runtime_of_nvidia_wheels(tmp_path, monkeypatch):
    """TVM's CUDA support links libcudart, which a CUDA build of torch brings as a wheel and loads
    itself; the server, kept free of torch, finds it on its library path."""
    from hwloop.transports.agent import with_wheel_cuda_runtime

    runtime = tmp_path / "nvidia" / "cu13" / "lib"
    runtime.mkdir(parents=True)
    (runtime / "libcudart.so.13").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/elsewhere")
    with_wheel_cuda_runtime()
    assert os.environ["LD_LIBRARY_PATH"].split(os.pathsep) == [str(runtime), "/opt/elsewhere"]
