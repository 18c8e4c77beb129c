"""Whole PyTorch models as TVM Relax modules, lowered the way a deployment compiles them.

A model in eval mode has its batch norms folded into the preceding convolutions (as every
deployment runtime does; skipped for a model that ``torch.fx`` cannot trace), is exported with
``torch.export``, imported with ``from_exported_program`` (weights bound as constants), legalised
to TIR and fused: each convolution or dense PrimFunc then carries its epilogue (bias, ReLU/ReLU6,
residual add), and a schedule policy schedules those PrimFuncs like single layers. A linear layer
reads its weight as stored (output channels by input channels), as the layer tables time it,
rather than through a transpose folded into the constant.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

LOWERING = (
    "DecomposeOpsForInference",
    "CanonicalizeBindings",
    "FuseTransposeMatmul",
    "LegalizeOps",
    "AnnotateTIROpPattern",
    "FoldConstant",
    "FuseOps",
    "FuseTIR",
)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each conv → batch-norm pair folded into one conv."""
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    try:
        return fuse(model)
    except Exception as exc:  # noqa: BLE001 - untraceable models keep their batch norms
        warnings.warn(f"batch norms left unfolded: torch.fx cannot trace {type(model).__name__} ({exc})", stacklevel=2)
        return model


def relax_module(model: nn.Module, input_shape: tuple[int, ...]):
    """``model`` as a legalised, fused Relax module with one function ``main(input)``."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    folded = fold_batch_norms(model)
    example = torch.zeros(input_shape)
    with torch.no_grad():
        exported = torch.export.export(folded, (example,))
    with warnings.catch_warnings():  # torch's own run_decompositions trips its LeafSpec deprecation
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        mod = from_exported_program(exported, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    passes = [getattr(relax.transform, name)() for name in LOWERING]
    return tvm.transform.Sequential(passes)(mod)


def compile_module(mod, target):
    """``mod`` (already lowered and scheduled) compiled for ``target`` into a Relax executable."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.relax.backend.gpu_generic import pipeline as gpu

    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    backend = cpu if target.kind.name == "llvm" else gpu
    lowering = tvm.transform.Sequential([*backend.dataflow_lower_passes(target), *backend.finalize_passes(target)])
    return tvm.compile(mod, target, relax_pipeline=lowering)
