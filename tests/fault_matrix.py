"""The fault matrix: faults of a board, of its link, of its compiler and of the host's disk, each
injected into each way hwloop measures, against real OpenSSH boards on loopback (:mod:`boards`).

A cell (:func:`run_cell`) starts what its path measures on, runs the path in a thread, injects the
fault once the victim's table holds a few rows (a hung compiler is there from the start), waits for
the run to end, mends the fault, runs the path again, and counts:

* rows lost: rows that were in the table at some point (watched while the runs went on) or that the
  path reported as written, and are not in it at the end;
* rows duplicated: successful rows beyond one per config (or model) and pass, in the whole table
  for paths that resume (a re-run measures only what is missing), else within each measuring call
  (``validate`` and each board round measure again on purpose). A row timed on a busy device
  (``quiet`` False) is taken again on purpose, so it is no duplicate.

tests/test_faults.py runs a few cells; bench/faults.py runs them all and writes the page.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import paramiko
import psutil
from boards import PYTHON, Board, Proxy, start_tracker, write_registry

from hwloop import builder, tables
from hwloop.layers import LayerConfig
from hwloop.registry import Link, load_registry
from hwloop.schedules import parse_policy

POLICY = parse_policy("untuned")
CONFIGS = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in range(2, 8)]
CANDIDATES = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in range(2, 26)]
BUDGET = 6  # measurements of an adaptive collection
SHAPE = (1, 3, 16, 16)
SHARES = (1.0, 0.75, 0.5, 0.25)  # widths of the models `measure` times
ROUNDS = 3
STALL_S = 10.0
REBOOT_S = 60.0
LINKS_BEFORE_HANG = 2  # links the hung compiler finishes before it hangs (validate: 1, it links two models)
BUILD_TIMEOUT_S = 15.0  # builds' timeout in the compiler cells (hwloop's own is minutes)
RUN_TIMEOUT_S = 300.0

FAULTS = {
    "sshd-killed": "SIGKILL of the board's sshd and of every process under it (its SSH sessions, the agent, "
    "the RPC server); sshd started again at once, as a service manager does",
    "board-hung": "SIGSTOP of every process of the board's SSH sessions (sshd's, the agent, the RPC server)",
    "link-stalled": f"the link (a TCP proxy on loopback) stops moving bytes for {STALL_S:g} s",
    "board-rebooted": f"the board's sshd and every process under it killed; sshd started again {REBOOT_S:g} s later",
    "compiler-hung": f"the device's cross compiler never returns, from its {LINKS_BEFORE_HANG + 1}rd link on (its "
    f"2nd for `validate`); builds time out after {BUILD_TIMEOUT_S:g} s here",
    "disk-full": "the filesystem of the tables folder (a small tmpfs) filled up",
}
PATHS = {
    "collect": f"`hwloop collect -d b0` on one SSH board (collect_fleet, one worker): {len(CONFIGS)} convs",
    "adaptive": f"`hwloop collect -d b0 --adaptive --budget {BUDGET}` (adaptive_collect: rounds of collect())",
    "measure": f"`hwloop measure -d b0` (measure_models): {len(SHARES)} small CNNs",
    "validate": "`hwloop validate -d b0 -m OUT` (validate): a small CNN, dense and pruned",
    "board-rounds": f"what `prune --board-rounds {ROUNDS}` runs between planning and fine-tuning: correct() "
    "with Board.time_plan, a dense and a thinned CNN per round",
    "fleet": f"`hwloop collect -d b0 -d b1`: two SSH boards, {len(CONFIGS)} convs each, the fault on b0",
    "tracker": f"a tracker pool of two boards (TVM RPC servers started through each board's sshd), "
    f"{len(CONFIGS)} convs, the fault on the first board",
}
ROOT_ONLY = {"disk-full"}

# TVM's RPC server without the torch that tvm_ffi imports eagerly (seconds saved)
RPC_SERVER = (
    "import runpy, sys; sys.modules['torch'] = None; runpy.run_module('tvm.exec.rpc_server', "
    "run_name='__main__', alter_sys=True)"
)
COMPILER = """#!/bin/sh
# g++, except that once `hang` (holding a count N) exists beside it, every link after the first N never returns
dir=$(dirname "$0")
exec 9>>"$dir/links.lock"
flock 9
links=$(( $(cat "$dir/links" 2>/dev/null || echo 0) + 1 ))
echo $links > "$dir/links"
flock -u 9
if [ -e "$dir/hang" ] && [ $links -gt "$(cat "$dir/hang")" ]; then exec sleep 100000; fi
exec g++ "$@"
"""
MODEL_FILE = '''from torch import nn


def tiny() -> nn.Module:
    """Two 3x3 convs and a classifier: a whole model that builds in seconds."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
'''


def now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


class Lab:
    """What one cell runs on (boards, proxies, a tracker, a tables folder), all stopped by :meth:`close`."""

    def __init__(self, work: Path, cache: Path, user_key: Path):
        self.work, self.cache, self.user_key = work, cache, user_key
        self.tables = work / "tables"
        self.tables.mkdir(parents=True)
        self.known = work / "known_hosts"
        self.boards: list[Board] = []
        self.proxies: list[Proxy] = []
        self.processes: list[subprocess.Popen] = []
        self.servers: dict[int, tuple] = {}  # board index → (tracker port, server port, address reported)
        self.clients: dict[int, paramiko.SSHClient] = {}
        self.timers: list[threading.Timer] = []
        self.stopped: list[psutil.Process] = []
        self.reboot_s = REBOOT_S
        self.mounted = False
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def board(self) -> Board:
        board = Board(self.work / f"board{len(self.boards)}", self.user_key.with_name(self.user_key.name + ".pub"))
        self.boards.append(board)
        self.trust(board, board.address, board.port)
        return board

    def trust(self, board: Board, address: str, port: int) -> None:
        """Record ``board``'s host key for ``address:port`` (the board itself, or a proxy in front of it)."""
        kind, blob = board.known_hosts_line().split()[1:]
        with open(self.known, "a") as known:
            known.write(f"[{address}]:{port} {kind} {blob}\n")

    def proxy(self, address: str, port: int, listen: tuple[str, int] = ("127.0.0.1", 0)) -> Proxy:
        self.proxies.append(Proxy(address, port, listen))
        return self.proxies[-1]

    def fields(self, name: str, board: Board, via: Proxy | None = None, **extra) -> dict:
        """A device on ``board`` (through ``via``): the test boards' fast protocol measuring one
        config at a time, short link timeouts, and hwloop's default link retries and backoff."""
        fields = board.device(name, self.user_key, self.known)
        fields["protocol"]["batch"] = 1
        fields["link"].update(retries=Link().retries, backoff=Link().backoff)
        if via is not None:
            fields.update(host=via.address, port=via.port)
        return {**fields, **extra}

    def registry(self, devices: dict[str, dict]):
        return load_registry(write_registry(self.work / "registry", devices))

    def compiler(self) -> Path:
        """A cross compiler that links with g++ until :meth:`hang_compiler`."""
        path = self.work / "compiler" / "cross-g++"
        path.parent.mkdir()
        path.write_text(COMPILER)
        path.chmod(0o755)
        return path

    def hang_compiler(self, after: int | None) -> None:
        """Make the compiler hang after ``after`` more links (None: work again)."""
        flag = self.work / "compiler" / "hang"
        if after is None:
            flag.unlink(missing_ok=True)
        else:
            links = self.work / "compiler" / "links"
            flag.write_text(str(after + int(links.read_text() if links.exists() else 0)))

    def mount_tables(self) -> None:
        """The tables folder on its own small tmpfs (root only)."""
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.tables)], check=True, capture_output=True
        )
        self.mounted = True

    def fill_disk(self, fill: bool) -> None:
        filler = self.tables / "filler"
        if not fill:
            filler.unlink(missing_ok=True)
            return
        with open(filler, "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                with contextlib.suppress(OSError):
                    while f.write(b"\0" * chunk):
                        pass

    def tracker(self) -> int:
        """Start an RPC tracker on 127.0.0.1; its port."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.processes.append(start_tracker(port, open(self.work / "tracker.log", "ab")))
        return port

    def serve(self, index: int, tracker: int, port: int, report_as: str) -> None:
        """Start TVM's RPC server on board ``index`` through its sshd (a command of an SSH session),
        listening on ``port`` of the board's address, joining ``tracker`` as ``report_as``."""
        board = self.boards[index]
        self.servers[index] = (tracker, port, report_as)
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known))
        client.connect(
            board.address,
            board.port,
            username=getpass.getuser(),
            key_filename=str(self.user_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
        )
        command = (
            f"exec {shlex.quote(PYTHON)} -c {shlex.quote(RPC_SERVER)} --host {board.address} --port {port} "
            f"--port-end {port + 1} --tracker 127.0.0.1:{tracker} --key pool --custom-addr {report_as} --silent"
        )
        client.exec_command(command)
        self.clients[index] = client

    def serve_again(self, index: int) -> None:
        """Kill what is left of board ``index``'s RPC server and start it again (killed while its SSH
        session holds it: once the session closes, it would live on outside the board's sshd)."""
        for process in self.boards[index].sessions():
            with contextlib.suppress(psutil.NoSuchProcess):
                if "rpc_server" in " ".join(process.cmdline()):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
        with contextlib.suppress(Exception):
            self.clients.pop(index).close()
        self.serve(index, *self.servers[index])

    def later(self, seconds: float, action: Callable[[], None]) -> threading.Timer:
        timer = threading.Timer(seconds, action)
        timer.start()
        self.timers.append(timer)
        return timer

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()
        for board in self.boards:  # first: what their SSH sessions run is still under their sshd
            board.stop()
        for client in self.clients.values():
            client.close()
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for proxy in self.proxies:
            proxy.close()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.tables)], check=False)


@dataclass
class Run:
    """One run of a path: when it ran, what it reported written, and how it ended."""

    start: pd.Timestamp = field(default_factory=now)
    end: pd.Timestamp | None = None
    error: str | None = None  # why the path stopped, or gave its board up
    reported: set[str] = field(default_factory=set)  # measurement ids the path reported
    calls: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)  # its measuring calls
    on_row: Callable[[str | None], None] = lambda device: None  # told of each row (and its device, in a fleet)

    def row(self, *args) -> None:
        """An ``on_row`` callback of the path (``row``, or ``device, row`` in a fleet)."""
        self.reported.add(args[-1]["measurement_id"])
        self.on_row(args[0] if len(args) == 2 else None)


@dataclass
class Setup:
    """A path set up in a lab: its devices, the one the fault hits, and how to run it once."""

    devices: list
    victim: str
    models: bool
    trigger: int  # rows of the victim's table before the fault
    resumable: bool
    go: Callable[[Run], None]
    keys: list[str]  # what a complete run measures (config or model ids), where known
    links_ok: int = LINKS_BEFORE_HANG  # links a hung compiler finishes first
    mend: Callable[[], None] = lambda: None  # after the fault is mended: what the path's boards need again


def _boards(lab: Lab, fault: str, count: int, **extra) -> list:
    """``count`` SSH devices b0, b1, ... on boards of ``lab``; b0 behind a proxy for a stalled link,
    with the hanging compiler for a hung one."""
    devices = {}
    for index in range(count):
        board = lab.board()
        via = None
        if index == 0 and fault == "link-stalled":
            via = lab.proxy(board.address, board.port)
            lab.trust(board, via.address, via.port)
        cc = {"cc": str(lab.compiler())} if index == 0 and fault == "compiler-hung" else {}
        devices[f"b{index}"] = lab.fields(f"b{index}", board, via, **cc, **extra)
    registry = lab.registry(devices)
    return [registry.get(name) for name in devices]


def collect_path(lab: Lab, fault: str, count: int = 1) -> Setup:
    from hwloop.fleet import collect_fleet

    devices = _boards(lab, fault, count)

    def go(run: Run) -> None:
        runs = collect_fleet(devices, CONFIGS, POLICY, lab.tables, lab.cache, on_row=run.row)
        run.error = "; ".join(f"{r.summary.device}: {r.error}" for r in runs if r.error) or None

    return Setup(devices, "b0", False, 2, True, go, [c.id for c in CONFIGS])


def adaptive_path(lab: Lab, fault: str) -> Setup:
    from hwloop.predictor.sampling import adaptive_collect

    (device,) = _boards(lab, fault, 1)

    def go(run: Run) -> None:
        summary = adaptive_collect(device, CANDIDATES, POLICY, lab.tables, lab.cache, BUDGET, on_row=run.row)
        run.error = summary.error

    return Setup([device], "b0", False, 2, True, go, [])


def _tiny(lab: Lab):
    from hwloop.models import load_model

    path = lab.work / "tiny.py"
    path.write_text(MODEL_FILE)
    spec = f"{path}:tiny"
    return spec, load_model(spec, SHAPE)[0]


def measure_path(lab: Lab, fault: str) -> Setup:
    from hwloop.endtoend import ModelCase, measure_models, model_id, model_layers
    from hwloop.prune.groups import thinned

    (device,) = _boards(lab, fault, 1)
    _, dense = _tiny(lab)
    cases = [
        ModelCase(f"tiny@{share:g}", dense if share == 1 else thinned(dense, SHAPE, share), SHAPE) for share in SHARES
    ]

    def go(run: Run) -> None:
        measure_models(device, cases, POLICY, lab.tables, lab.cache, on_row=run.row)

    keys = [model_id(c.name, c.input_shape, model_layers(c.model, c.input_shape)) for c in cases]
    return Setup([device], "b0", True, 2, True, go, keys)


def validate_path(lab: Lab, fault: str) -> Setup:
    from hwloop.models import file_sha256, model_file
    from hwloop.prune import export
    from hwloop.prune.groups import ChannelGroups, thinned
    from hwloop.prune.validate import validate

    (device,) = _boards(lab, fault, 1)
    spec, dense = _tiny(lab)
    pruned = thinned(dense, SHAPE, 0.25)
    groups = {
        g.name: {"dense": g.size, "kept": max(1, round(0.25 * g.size))} for g in ChannelGroups(dense, SHAPE).groups
    }
    out = lab.work / "pruned"
    export.save(
        out,
        pruned,
        dense,
        {
            "model": spec,
            "model_sha256": file_sha256(model_file(spec)),
            "input_shape": list(SHAPE),
            "num_classes": 4,
            "groups": groups,
            "schedule": POLICY.name,
            "method": "uniform",
        },
    )

    def go(run: Run) -> None:
        validate(device, out, lab.tables, lab.cache, on_row=run.row)
        run.calls.append((run.start, now()))

    return Setup([device], "b0", True, 1, False, go, [], links_ok=1)


def board_rounds_path(lab: Lab, fault: str) -> Setup:
    from hwloop.prune.board import Board as PlanBoard
    from hwloop.prune.board import correct
    from hwloop.prune.groups import thinned

    (device,) = _boards(lab, fault, 1)
    _, dense = _tiny(lab)
    board = PlanBoard(device, lab.tables, lab.cache, rounds=ROUNDS, tolerance=0.0)  # every round is timed

    def go(run: Run) -> None:
        def timed(planned):
            start = now()
            try:
                return board.time_plan(dense, planned[1], SHAPE, "tiny", "uniform", POLICY.name)
            finally:
                run.calls.append((start, now()))

        correct(
            lambda share: (share, thinned(dense, SHAPE, min(max(share, 0.1), 1.0))),
            lambda planned: planned[0],
            timed,
            0.5,
            lambda dense_ms: 0.5 * dense_ms,
            board.rounds,
            board.tolerance,
        )

    return Setup([device], "b0", True, 2, False, go, [])


def tracker_path(lab: Lab, fault: str) -> Setup:
    from hwloop.fleet import collect_fleet
    from hwloop.transports.tracker import pool_size

    tracker = lab.tracker()
    for index in range(2):
        board = lab.board()
        with socket.socket() as s:
            s.bind((board.address, 0))
            port = s.getsockname()[1]
        report_as = board.address
        if index == 0 and fault == "link-stalled":  # the tracker hands out the proxy in front of the server
            report_as = f"127.0.0.{251 if board.address != '127.0.0.251' else 252}"
            lab.proxy(board.address, port, (report_as, port))
        lab.serve(index, tracker, port, report_as)
    fields = {
        "transport": "tracker",
        "host": "127.0.0.1",
        "port": tracker,
        "pool": "pool",
        "target": {"kind": "llvm", "mcpu": "host"},
        "protocol": {**lab.boards[0].device("x", lab.user_key, lab.known)["protocol"], "batch": 1},
        "link": {"connect_timeout": 3, "stall_timeout": 4, "start_timeout": 20},
    }
    if fault == "compiler-hung":
        fields["cc"] = str(lab.compiler())
    device = lab.registry({"pool": fields}).get("pool")

    def full_pool() -> None:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(Exception):
                if pool_size(device) >= 2:
                    return
            assert time.monotonic() < deadline, "the RPC servers did not join the tracker"
            time.sleep(0.2)

    def mend() -> None:
        lab.serve_again(0)
        full_pool()

    def go(run: Run) -> None:
        (result,) = collect_fleet([device], CONFIGS, POLICY, lab.tables, lab.cache, on_row=run.row)
        run.error = result.error

    full_pool()
    return Setup([device], "pool", False, 2, True, go, [c.id for c in CONFIGS], mend=mend)


SETUPS = {
    "collect": collect_path,
    "adaptive": adaptive_path,
    "measure": measure_path,
    "validate": validate_path,
    "board-rounds": board_rounds_path,
    "fleet": lambda lab, fault: collect_path(lab, fault, 2),
    "tracker": tracker_path,
}


class Watch:
    """The path's tables, read again and again while its runs go on: every measurement id seen."""

    COLUMNS = ["measurement_id", "status", "stage", "error", "quiet", "measured_at"]

    def __init__(self, path: Setup, tables_dir: Path):
        self.path, self.tables_dir = path, tables_dir
        self.seen: set[str] = set()

    def rows(self, name: str | None = None) -> pd.DataFrame:
        """The rows of the path's devices (or of ``name``'s), their config or model id as ``key``."""
        read, key = (tables.read_models, "model_id") if self.path.models else (tables.read, "config_id")
        frame = pd.concat(
            [
                read(self.tables_dir, d.name, columns=[key, *self.COLUMNS]).assign(device=d.name)
                for d in self.path.devices
                if name in (None, d.name)
            ],
            ignore_index=True,
        )
        self.seen.update(frame.measurement_id)
        return frame.rename(columns={key: "key"})


def _wait(thread: threading.Thread, watch: Watch, timeout: float, until: Callable[[], bool] = lambda: False) -> bool:
    """Watch the tables until ``thread`` ends (True), or ``until()`` holds or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        with contextlib.suppress(tables.TableError):
            watch.rows()
            if until():
                return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _start(path: Setup, run: Run) -> threading.Thread:
    def target() -> None:
        try:
            path.go(run)
        except Exception as exc:  # noqa: BLE001 - how the run ended is what the cell reports
            run.error = f"{type(exc).__name__}: {exc}"
        run.end = now()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def inject(lab: Lab, fault: str, path: Setup) -> None:
    """Inject ``fault`` into the first board (the first proxy, the compiler, the tables' disk)."""
    victim = lab.boards[0]
    if fault == "sshd-killed":
        victim.restart()
    elif fault == "board-hung":
        lab.stopped = victim.signal_sessions(signal.SIGSTOP)
    elif fault == "link-stalled":
        lab.proxies[0].stall()
        lab.later(STALL_S, lab.proxies[0].resume)
    elif fault == "board-rebooted":
        victim.stop()
        lab.later(lab.reboot_s, victim.start)
    elif fault == "compiler-hung":
        lab.hang_compiler(path.links_ok)
    elif fault == "disk-full":
        lab.fill_disk(True)


def mend(lab: Lab, fault: str) -> None:
    """Undo ``fault`` (wait for a stalled link or a rebooting board to come back)."""
    if fault == "board-hung":
        for process in lab.stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
    elif fault in ("link-stalled", "board-rebooted"):
        lab.timers[-1].join()
    elif fault == "compiler-hung":
        lab.hang_compiler(None)
    elif fault == "disk-full":
        lab.fill_disk(False)


def run_cell(
    fault: str,
    path_name: str,
    work: Path,
    cache: Path,
    user_key: Path,
    timeout: float = RUN_TIMEOUT_S,
    reboot_s: float = REBOOT_S,
) -> dict:
    """One cell of the matrix, run in ``work``: its counts and outcome (see the module docstring).

    The fault comes 0.1 s after the path reported the victim's ``trigger``-th row (in the middle
    of the next measurement), or once the victim's table holds that many rows where the path
    reports none; a hung compiler is there from the start."""
    started = time.monotonic()
    lab = Lab(work, cache, user_key)
    lab.reboot_s = reboot_s
    saved = builder.BUILD_TIMEOUT_S
    try:
        if fault == "disk-full":
            lab.mount_tables()
        if fault == "compiler-hung":
            builder.BUILD_TIMEOUT_S = BUILD_TIMEOUT_S
        path = SETUPS[path_name](lab, fault)
        watch = Watch(path, lab.tables)
        first = Run()
        injected: list[pd.Timestamp] = []
        lock = threading.Lock()

        def fire() -> None:
            with lock:
                if not injected and first.end is None:
                    injected.append(now())
                    inject(lab, fault, path)

        victim_rows = []

        def count(device: str | None) -> None:
            if device in (None, path.victim):
                victim_rows.append(device)
                if len(victim_rows) == path.trigger:
                    lab.later(0.1, fire)

        if fault == "compiler-hung":
            fire()
        else:
            first.on_row = count
        thread = _start(path, first)
        _wait(thread, watch, timeout, lambda: bool(injected) or len(watch.rows(path.victim)) >= path.trigger)
        fire()
        runs, ended = [first], [_wait(thread, watch, timeout)]
        if ended[0]:
            with lock:  # after a fault still being injected
                mend(lab, fault)
            path.mend()
            again = Run()
            thread = _start(path, again)
            runs.append(again)
            ended.append(_wait(thread, watch, timeout))
        rows = watch.rows()
        reported = set().union(*(run.reported for run in runs))
        fault_at = injected[0] if injected else now()
        cell = {
            "fault": fault,
            "path": path_name,
            "injected": bool(injected),
            "lost": len((watch.seen | reported) - set(rows.measurement_id)),
            "duplicated": _duplicated(rows, path, runs),
            "runs": [_describe(run, done, rows, path, fault_at, timeout) for run, done in zip(runs, ended)],
        }
        cell["outcome"], cell["summary"] = outcome(cell), outcome(cell, brief=True)
    finally:
        builder.BUILD_TIMEOUT_S = saved
        lab.close()
    cell["wall_s"] = round(time.monotonic() - started, 1)
    return cell


def _duplicated(rows: pd.DataFrame, path: Setup, runs: list[Run]) -> int:
    """Successful rows timed on a quiet device beyond one per key and pass: in the whole table for a
    path that resumes, else within each measuring call."""
    ok = rows[(rows.status == "ok") & rows.quiet.ne(False)]
    passes = path.devices[0].protocol.passes
    if path.resumable:
        return int((ok.groupby(["device", "key"]).size() - passes).clip(lower=0).sum())
    extra = 0
    for run in runs:
        for start, end in run.calls:
            inside = ok[(ok.measured_at >= start) & (ok.measured_at <= end)]
            extra += int((inside.groupby(["device", "key"]).size() - passes).clip(lower=0).sum())
    return extra


def _describe(run: Run, ended: bool, rows: pd.DataFrame, path: Setup, fault_at: pd.Timestamp, timeout: float) -> dict:
    """How one run ended: ``kind`` (completed, given up, stopped, failed rows, hung) and its figures."""
    if not ended:
        return {"kind": "hung", "error": f"did not end within {timeout:g} s"}
    mine = rows[(rows.measured_at >= run.start) & (rows.measured_at <= run.end)]
    failed = mine[mine.status != "ok"]
    ok = rows[(rows.status == "ok") & (rows.measured_at <= run.end)]
    missing = {d.name: sorted(set(path.keys) - set(ok[ok.device == d.name].key)) for d in path.devices}
    reconnects = re.search(r"(\d+) reconnects failed", run.error or "")
    kind = ("given up" if reconnects else "stopped") if run.error else "failed rows" if len(failed) else "completed"
    return {
        "kind": kind,
        "error": run.error,
        "reconnects": int(reconnects.group(1)) if reconnects else None,
        "rows": len(mine),
        "after_fault": int((mine.measured_at > fault_at).sum()),
        "failed": failed.stage.value_counts().to_dict(),
        "failure": failed.error.iloc[0] if len(failed) else None,
        "missing": {name: len(keys) for name, keys in missing.items() if keys},
    }


def outcome(cell: dict, brief: bool = False) -> str:
    """How the faulted run ended (and, in a fleet, the other board), and whether a re-run completes;
    ``brief``: without the errors' text."""
    first, *again = cell["runs"]
    if not cell["injected"]:
        return "the run ended before the fault"
    text = _ending(first, cell["fault"], brief)
    if cell["path"] == "fleet" and first["kind"] != "hung":
        text += "; b1 " + ("left unfinished" if "b1" in first["missing"] else "completed")
    if again:
        rerun = again[0]
        complete = rerun["kind"] == "completed" and not rerun["missing"]
        text += "; re-run completes" if complete else f"; re-run: {_ending(rerun, None, brief)}"
    return text


def _ending(run: dict, fault: str | None, brief: bool) -> str:
    kind, error = run["kind"], "" if brief else f": {_short(run['error'])}"
    if kind == "hung":
        return run["error"]
    if kind == "given up":
        return f"given up after {run['reconnects']} reconnects{error}"
    if kind == "stopped":
        return f"stopped{error}"
    if kind == "failed rows":
        stages = ", ".join(f"{count} at {stage}" for stage, count in run["failed"].items())
        return f"{sum(run['failed'].values())} failed ({stages})" + ("" if brief else f": {_short(run['failure'])}")
    resumed = fault not in (None, "compiler-hung", "disk-full") and run["after_fault"]
    return "retried, completed" if resumed else "completed"


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
