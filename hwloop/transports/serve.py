"""``python -m hwloop.transports.serve ARGS``: TVM's RPC server (``tvm.exec.rpc_server`` ARGS),
started without torch, which ``tvm_ffi`` imports eagerly and the server never uses (~3 s saved)."""

import runpy
import sys

if __name__ == "__main__":
    sys.modules["torch"] = None
    runpy.run_module("tvm.exec.rpc_server", run_name="__main__", alter_sys=True)
