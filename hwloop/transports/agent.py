"""TVM's RPC server on the loopback of a board or of this machine, serving only the holder of its key.

Run with the device's Python; standard library only until TVM is imported, so it runs on boards
without hwloop: ``python agent.py [--port N] [--executable PYTHON]``, with :mod:`usage` and
:mod:`trial` beside it (registered in the server: what the timing process shared its CPU with, and a
whole trial in one call). The first line of its standard input is its key, a fresh random string
(never on its command line, which every user of the machine can read): the server refuses a client
whose handshake does not carry it. It prints one JSON line, ``{"port": N, "pgid": G, ...}`` once the
server listens, or ``{"error": ..., ...}`` when it cannot start. Its process group dies when its
standard input closes: hwloop closing it, hwloop dying, or the SSH channel that started it going
away.
"""

import argparse
import functools
import glob
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading

REQUIRED = ("numpy", "tvm", "cloudpickle")


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def read_key():
    """The key on the first line of standard input, or None when there is none."""
    key = sys.stdin.buffer.readline().decode(errors="replace").strip()
    return key if key and not any(c.isspace() for c in key) else None


def die_with_stdin():
    def watch():
        try:
            while os.read(0, 4096):
                pass
        finally:
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def without_torch():
    """Keep torch out of this process and of the server's (a ``torch`` that fails to import, first on
    their path).

    ``tvm_ffi`` imports torch eagerly and then asks ``torch.cuda.is_available()``, which initialises
    the CUDA driver on a machine with an NVIDIA GPU. TVM's server forks a process per session from
    its own, and CUDA cannot be used in a process forked from one that initialised it (every CUDA
    call fails with ``cudaErrorInitializationError``). Without torch, the session's process is the
    first to touch CUDA (and no process pays ~3 s for an import that kernels never use)."""
    sys.modules["torch"] = None
    shim = tempfile.mkdtemp(prefix="notorch-")
    with open(os.path.join(shim, "torch.py"), "w") as f:
        f.write('raise ImportError("the hwloop agent runs TVM without torch")\n')
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, os.environ.get("PYTHONPATH")]))
    os.environ["TVM_FFI_DISABLE_TORCH_C_DLPACK"] = "1"  # and tvm_ffi's torch hook off, should torch import anyway


def with_wheel_cuda_runtime():
    """Put the CUDA runtime of NVIDIA's wheels (``nvidia-cuda-runtime``, which a CUDA build of torch
    brings) on the library path of the server's processes: TVM's CUDA support links ``libcudart``,
    which torch would have loaded, and torch is kept out of them (:func:`without_torch`)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folders = sorted(
        {
            os.path.dirname(path)
            for root in roots
            for path in glob.glob(os.path.join(root, "*", "lib", "libcudart.so.*"))
        }
    )
    if folders:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*folders, os.environ.get("LD_LIBRARY_PATH")]))


def start_server(*modules):
    """Run in the server's process before it listens: each of ``modules``' functions registered
    (its session processes inherit them), and the listener kept serving after a session dies.

    TVM's listener raises when a session's process exits abnormally (a kernel that crashed), which
    ends its thread: the port stays open and every later connection waits unanswered. A session
    that dies is reported on standard error instead, and the next one served."""
    from tvm.rpc import server

    for module in modules:
        module.register()
    serving = getattr(server, "_serving", None)
    if serving is None:  # a board's TVM without this listener: served as it is
        return

    def serve_on(sock, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            serving(sock, addr, opts, load_library)
        except RuntimeError as exc:
            print(f"hwloop agent: a session ended abnormally: {exc}", file=sys.stderr, flush=True)
            os.chdir(cwd)
            sock.close()

    server._serving = serve_on


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9090, help="the first port tried; the next 1000 follow")
    parser.add_argument(
        "--executable",
        help="the interpreter command the server's workers are started with "
        "(a wrapper such as an emulator launcher stays in the loop)",
    )
    args = parser.parse_args()
    try:
        os.setpgid(0, 0)  # its own process group, unless it already leads a session (sshd's setsid)
    except OSError:
        pass
    key = read_key()
    die_with_stdin()
    if args.executable:
        sys.executable = shutil.which(args.executable) or args.executable
    python = {"python": sys.executable, "python_version": platform.python_version()}
    if key is None:
        report(error="key", detail="no key on the first line of standard input", **python)
        return 2
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        report(error="missing", missing=missing, **python)
        return 3
    without_torch()
    with_wheel_cuda_runtime()
    try:
        import tvm
        from tvm import rpc
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, whatever it raises
        report(error="import", detail=f"{type(exc).__name__}: {exc}", **python)
        return 3
    import cloudpickle
    import trial
    import usage

    for module in (usage, trial):  # the server's worker process gets the code, not a module name
        cloudpickle.register_pickle_by_value(module)
    server = rpc.Server(
        host="127.0.0.1",
        port=args.port,
        port_end=min(args.port + 1000, 65536),
        key=key,
        silent=True,
        reuse_addr=False,  # a port another server on this host has bound but not yet listens on is skipped
        server_init_callback=functools.partial(start_server, usage, trial),
    )
    report(port=server.port, pgid=os.getpgid(0), tvm=str(tvm.__version__), **python)
    server.proc.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
