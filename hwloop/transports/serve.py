"""``python -m hwloop.transports.serve ARGS``: TVM's RPC server (``tvm.exec.rpc_server`` ARGS) for the
local device.

It starts without torch, which ``tvm_ffi`` imports eagerly and the server never uses (~3 s saved),
and on SIGTERM it kills its whole process group: the server proper runs in a TVM popen worker,
with one more process per session, and none of them may outlive hwloop.
"""

import os
import runpy
import signal
import sys

if __name__ == "__main__":
    sys.modules["torch"] = None
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    runpy.run_module("tvm.exec.rpc_server", run_name="__main__", alter_sys=True)
