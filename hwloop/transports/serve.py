"""``python -m hwloop.transports.serve --port N --port-end M``: TVM's RPC server on 127.0.0.1 for
the local device, with ``hwloop.usage`` (:mod:`hwloop.usage`) registered in it.

It starts without torch, which ``tvm_ffi`` imports eagerly and the server never uses (~3 s saved),
and on SIGTERM it kills its whole process group: the server proper runs in a TVM popen worker,
with one more process per session, and none of them may outlive hwloop.
"""

import argparse
import os
import signal
import sys

if __name__ == "__main__":
    sys.modules["torch"] = None
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--port-end", type=int, required=True)
    args = parser.parse_args()

    from tvm import rpc

    from hwloop.usage import register

    server = rpc.Server("127.0.0.1", args.port, args.port_end, silent=True, server_init_callback=register)
    server.proc.join()
