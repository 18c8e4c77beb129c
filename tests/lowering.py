"""A layer as TVM lowers it for a target: what the tests read allocations and loops from."""

import tvm

from hwloop.kernels import prim_module
from hwloop.schedules.default import schedule


def lowered_script(config, target: tvm.target.Target) -> str:
    """The script of ``config``'s kernel under the ``default`` rules, lowered for ``target`` as a build
    lowers it (the default TIR pipeline, then the host's)."""
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(schedule(prim_module(config), target))
    pipeline, finalize_host, _ = tvm.tirx.get_default_tir_pipeline(target)
    return finalize_host()(pipeline(mod))["main"].script()
