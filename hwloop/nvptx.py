"""CUDA kernels built on a host without a CUDA toolkit: TVM's ``nvptx`` target emits PTX through LLVM.

TVM 0.27 with its bundled LLVM needs four corrections for that PTX to load and run on a GPU:

* TVM asks ``tvm_callback_libdevice_path`` for NVIDIA's libdevice and fails when no toolkit is
  installed: without one, kernels are built without libdevice.
* ``fma`` is lowered to libdevice's ``__nv_fmaf``, an unresolved symbol without libdevice: it is
  lowered to LLVM's ``llvm.fma`` instead (the same ``fma.rn`` instruction).
* A block-wide barrier (``__syncthreads``) is lowered to ``llvm.nvvm.barrier.cta.sync.aligned.all``
  without its barrier-id operand, which LLVM rejects: every kernel using shared memory failed to
  compile. Shared-memory barriers are lowered to that intrinsic with id 0.
* Kernels are marked through ``nvvm.annotations`` metadata, which this LLVM no longer reads, so they
  come out as device functions (``.func``) that the CUDA driver cannot launch:
  :func:`mark_kernels` turns them into ``.entry`` in the exported library.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

BARRIER = "llvm.nvvm.barrier.cta.sync.aligned.all"
# `.visible .func NAME(` + newline + tab, rewritten with the same length (the PTX blob in the library
# is length-prefixed): functions with a return value (`.func (.param ...) NAME`) are not kernels.
_DEVICE_FUNCTION = re.compile(rb"\.visible \.func ([A-Za-z_$][\w$]*)\(\n\t")


@lru_cache(maxsize=1)
def prepare() -> None:
    """Make TVM's NVPTX code generation usable in this process (idempotent)."""
    import tvm_ffi
    from tvm import tirx
    from tvm.support import nvcc

    @tvm_ffi.register_global_func("tvm_callback_libdevice_path", override=True)
    def _libdevice(arch: int) -> str:
        try:
            return nvcc.find_libdevice_path(arch)
        except (RuntimeError, OSError):  # no CUDA toolkit on this host: build without libdevice
            return ""

    def _fma(call):
        dtype = str(call.ty)
        return tirx.call_llvm_pure_intrin(dtype, f"llvm.fma.{_llvm_type(dtype)}", *call.args)

    def _barrier(call):
        if call.args[0].value != "shared":
            return call
        return tirx.call_llvm_intrin("void", BARRIER, tirx.IntImm("int32", 0))

    tirx.op.register_intrin_lowering("tirx.fma", target="nvptx", f=_fma, level=99)
    tirx.op.register_intrin_lowering("tirx.tvm_storage_sync", target="nvptx", f=_barrier, level=99)


def _llvm_type(dtype: str) -> str:
    """LLVM's name of a float type: ``float32`` -> ``f32``, ``float32x4`` -> ``v4f32``."""
    from tvm.runtime import DataType

    t = DataType(dtype)
    scalar = f"f{t.bits}"
    return f"v{t.lanes}{scalar}" if t.lanes > 1 else scalar


def mark_kernels(library: Path) -> int:
    """Turn the device functions of the PTX embedded in ``library`` into kernels; how many there were."""
    data = Path(library).read_bytes()
    fixed, count = _DEVICE_FUNCTION.subn(rb".visible .entry \1(\n", data)
    if count:
        Path(library).write_bytes(fixed)
    return count
