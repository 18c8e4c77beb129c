"""The board side of the SSH transport: TVM's RPC server on the board's loopback.

Shipped to the board's work folder over SFTP and run with the board's Python; standard library
only until TVM is imported, so it runs on boards without hwloop. ``python board_agent.py
[--port N] [--executable PYTHON]`` prints one JSON line: ``{"port": N, "pgid": G, ...}`` once the
server listens, or ``{"error": ..., ...}`` when it cannot start. Its process group dies when its
standard input closes, which is how the SSH channel that started it going away is seen.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import threading

REQUIRED = ("numpy", "tvm")


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def die_with_stdin():
    def watch():
        try:
            while os.read(0, 4096):
                pass
        finally:
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def without_torch():
    """``tvm_ffi`` imports torch eagerly; kernels never use it, so neither this process nor its
    children (a ``torch.py`` that fails to import, first on their path) pay for it."""
    sys.modules["torch"] = None
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(here, "notorch"),
                                                             os.environ.get("PYTHONPATH")]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--executable", help="the interpreter command the server's workers are started with "
                                             "(a wrapper such as an emulator launcher stays in the loop)")
    args = parser.parse_args()
    die_with_stdin()
    if args.executable:
        sys.executable = shutil.which(args.executable) or args.executable
    python = {"python": sys.executable, "python_version": platform.python_version()}
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        report(error="missing", missing=missing, **python)
        return 3
    without_torch()
    try:
        import tvm
        from tvm import rpc
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, whatever it raises
        report(error="import", detail=f"{type(exc).__name__}: {exc}", **python)
        return 3
    server = rpc.Server(host="127.0.0.1", port=args.port, port_end=args.port + 1000, silent=True)
    report(port=server.port, pgid=os.getpgid(0), tvm=str(tvm.__version__), **python)
    server.proc.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
