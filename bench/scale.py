"""hwloop at scale: a device table of 100,000 rows, and a fleet of loopback SSH boards.

    .venv/bin/python bench/scale.py [--rows 100000] [--boards 4] [--configs 60] [--out DIR]

Tables: synthetic rows of the real schema (conv, depthwise and linear configs, three passes each,
written run by run as collections write them) fill a device's table; then the loop's reads are
timed: `hwloop tables show`, a collection's planning (in process, and `hwloop collect --dry-run`
of an 8,192-config space file: what a collection does before its first build), reading the rows a
predictor learns from, `hwloop fit`, `hwloop evaluate` and `hwloop report` (their time and peak memory),
and the files the folder holds. Fleet:
``--boards`` real sshd boards
on 127.0.0.x each time ``--configs`` cached builds of tiny convs with a minimal protocol (one
repeat per trial; the boards share this host's CPUs, so the busy-device check is off), so that
the host's own work per measurement shows; the CPU time of hwloop's processes is counted apart
from the boards' (sshd sessions and everything under them), for the whole run and per measurement
between the run's rows at a quarter and at three quarters (what a longer run adds, its start paid
once). Then the same fleet again with two boards killed halfway, and a re-run: rows lost or
duplicated are counted.

Writes ``scale.json`` (with the machine, the commit and the command) into ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import script_record  # noqa: E402
from hwloop import tables  # noqa: E402
from hwloop.builder import BuildJob, BuildPool, BuildQueue  # noqa: E402
from hwloop.collect import pending  # noqa: E402
from hwloop.fleet import collect_fleet  # noqa: E402
from hwloop.layers import LayerConfig  # noqa: E402
from hwloop.predictor import features  # noqa: E402
from hwloop.registry import load_registry  # noqa: E402
from hwloop.rows import Context  # noqa: E402
from hwloop.schedules import parse_policy  # noqa: E402
from hwloop.targets import resolve  # noqa: E402

POLICY = parse_policy("default")
RUN_ROWS = 600  # rows per synthetic collection run
SHORT_CALLS = 3  # calls of a short command; its figure is their median, the first call's kept beside it


def synthetic_configs(count: int, rng: np.random.Generator) -> list[LayerConfig]:
    configs: dict[LayerConfig, None] = {}
    while len(configs) < count:
        kind = rng.choice(["conv", "pointwise", "depthwise", "linear"], p=[0.5, 0.25, 0.15, 0.1])
        hw = int(rng.choice([7, 14, 28, 56]))
        cin, cout = int(rng.integers(1, 513)), int(rng.integers(1, 513))
        if kind == "conv":
            config = LayerConfig("conv2d", cin, cout, hw, hw, kernel=3, stride=int(rng.choice([1, 2])), padding=1)
        elif kind == "pointwise":
            config = LayerConfig("conv2d", cin, cout, hw, hw)
        elif kind == "depthwise":
            config = LayerConfig("depthwise_conv2d", cin, cin, hw, hw, kernel=3, padding=1, groups=cin)
        else:
            config = LayerConfig("linear", cin, cout)
        configs[config] = None
    return list(configs)


def fill(tables_dir: Path, device, rows: int, seed: int = 0) -> list[LayerConfig]:
    """``rows`` synthetic rows of ``device`` (three passes of ``rows // 3`` configs), sealed run by
    run as collections seal them (:data:`RUN_ROWS` a run), small parts merged after each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hwloop.builder import Built
    from hwloop.rows import layer_row
    from hwloop.runner import Measurement, Trial

    rng = np.random.default_rng(seed)
    configs = synthetic_configs(rows // 3, rng)
    context = Context.of(device, POLICY)
    fp = {"id": "synthetic", "cpu_model": "synthetic", "arch": "x86_64", "cores": 2}
    directory = tables.device_dir(tables_dir, device.name)
    directory.mkdir(parents=True, exist_ok=True)
    for run, first in enumerate(range(0, rows, RUN_ROWS)):
        batch = []
        for index in range(first, min(first + RUN_ROWS, rows)):
            config = configs[index % len(configs)]
            latency = config.macs / 2e7 * float(rng.lognormal(0, 0.05)) + 0.005
            m = Measurement(trials=[Trial(list(latency * rng.lognormal(0, 0.01, 10)), 0.0, 0.0) for _ in range(3)])
            batch.append(layer_row(context, config, Built(None, "x", None, 0.0, True), m, fp))
        pq.write_table(
            pa.Table.from_pylist(batch, schema=tables.SCHEMA), directory / f"part-synthetic-{run:06d}.parquet"
        )
        tables.merge_tiers(directory, tables.SCHEMA)
    return configs


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def hwloop(work: Path, *args: str, calls: int = 1) -> dict:
    """``hwloop ARGS`` in a fresh process, ``calls`` times: the median wall time (``s``), each call's
    (``calls_s``), the peak memory and whether every call succeeded."""
    env = dict(os.environ, HWLOOP_REGISTRY=str(work / "registry"))
    seconds, peaks, ok = [], [], True
    for _ in range(calls):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", SINGLE_RUN, *args], capture_output=True, text=True, env=env)
        seconds.append(time.perf_counter() - start)
        if done.returncode:
            ok = False
            print(f"hwloop {' '.join(args)} failed: {done.stderr[-2000:]}", file=sys.stderr)
        else:
            peaks.append(float(done.stdout.strip().splitlines()[-1]))
    return {"s": float(np.median(seconds)), "calls_s": seconds, "ok": ok, "peak_mib": max(peaks, default=None)}


SINGLE_RUN = """import sys
from hwloop.cli import main
sys.argv = ["hwloop", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    if exit.code:
        raise
peak_kib = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print()
print(int(peak_kib) / 1024)
"""  # VmHWM: this process's own peak (ru_maxrss would count the parent's at the fork)


def table_figures(args, device, work: Path) -> dict:
    tables_dir = work / "tables"
    (work / "registry").mkdir(exist_ok=True)
    fill_s, configs = timed(fill, tables_dir, device, args.rows)
    files = sorted(p.name for p in tables.device_dir(tables_dir, device.name).rglob("*") if p.is_file())
    # the commands first, as a user calls them: a first call made while this process holds the
    # whole table in memory took twice as long as the next ones
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import hwloop.cli"], check=True)
    startup_s = time.perf_counter() - start
    show = hwloop(work, "tables", "show", device.name, "--tables", str(tables_dir), "--json", calls=SHORT_CALLS)
    space = work / "space.yaml"  # 3x3 convs at 14² and 28², 8,192 configs, some of them in the table
    space.write_text(
        "layers:\n  - {op: conv2d, in_channels: {start: 1, stop: 513, step: 16}, "
        "out_channels: {start: 1, stop: 513, step: 4}, input_hw: [14, 28], kernel: 3, stride: 1}\n"
    )
    plan = hwloop(
        work,
        "collect",
        "-d",
        device.name,
        "--space",
        str(space),
        "--tables",
        str(tables_dir),
        "--dry-run",
        calls=SHORT_CALLS,
    )
    fit = hwloop(
        work, "fit", "-d", device.name, "--tables", str(tables_dir), "--predictors", str(work / "predictors"), "--json"
    )
    predictors = ("--tables", str(tables_dir), "--predictors", str(work / "predictors"))
    evaluate = hwloop(work, "evaluate", "-d", device.name, *predictors, "--json")
    report = hwloop(work, "report", "-d", device.name, *predictors, "--out", str(work / "report"))
    read_all_s, frame = timed(tables.read, tables_dir, device.name)
    context = Context.of(device, POLICY)
    wanted = configs[: len(configs) // 2] + synthetic_configs(len(configs) // 2 + 50, np.random.default_rng(1))[-50:]
    plan_s, todo = timed(pending, wanted, context, tables_dir, False)
    learn_s, learned = timed(
        tables.read,
        tables_dir,
        device.name,
        columns=[
            "config_id",
            *features.COLUMNS,
            "latency_ms",
            "latency_cv",
            "measured_at",
            "fp_id",
            "schedule",
            "protocol_id",
            "target",
            "status",
            "device",
        ],
        where={"status": "ok"},
    )
    return {
        "rows": len(frame),
        "fill_s": fill_s,
        "files": len(files),
        "read_all_s": read_all_s,
        "plan_s": plan_s,
        "wanted": len(wanted),
        "planned": len(todo),
        "read_learning_rows_s": learn_s,
        "learning_rows": len(learned),
        "cli_startup_s": startup_s,
        "tables_show": show,
        "collect_dry_run": plan,
        "fit": fit,
        "evaluate": evaluate,
        "report": report,
    }


def board_cpu(boards) -> float:
    """CPU seconds of every process under the boards' sshd listeners (the boards' own work)."""
    total = 0.0
    for board in boards:
        for process in [psutil.Process(board.process.pid), *board.sessions()]:
            try:
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
    return total


def own_cpu(boards) -> float:
    """CPU seconds of this process and of every process under it, finished or not, except the
    boards' (their sshd and its sessions)."""
    board_pids = {p.pid for board in boards for p in [psutil.Process(board.process.pid), *board.sessions()]}
    times = psutil.Process().cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in psutil.Process().children(recursive=True):
        if child.pid not in board_pids:
            try:
                t = child.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
    return total


def fleet_figures(args, work: Path) -> dict:
    from boards import Board, keygen, write_registry

    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    os.environ["HOME"] = str(home)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    key = keygen(work / "id_ed25519")
    boards = [Board(work / f"board{i}", key.with_name(key.name + ".pub")) for i in range(args.boards)]
    try:
        known = work / "known_hosts"
        known.write_text("".join(b.known_hosts_line() for b in boards))
        minimal = {
            "protocol": {
                "warmup": 0,
                "number": 1,
                "repeat": 1,
                "min_repeat_ms": 0,
                "threads": 1,
                "max_wait": 1.0,
                "max_steal": 1.0,
            }
        }
        devices = {f"b{i}": {**b.device(f"b{i}", key, known), **minimal} for i, b in enumerate(boards)}
        registry = load_registry(write_registry(work / "registry-boards", devices))
        fleet = registry.select(list(devices))
        configs = [LayerConfig("conv2d", 4, c, 8, 8, kernel=3, padding=1) for c in range(1, args.configs + 1)]
        cache = work / "cache"
        target = resolve(fleet[0].target, 1)
        with BuildPool(cache) as pool:  # builds cached before the timed run
            list(BuildQueue(pool, [BuildJob(c, target, POLICY.name) for c in configs]))
        result = fleet_run(fleet, boards, configs, work / "fleet-tables", cache)
        result["killed"] = killed_run(fleet, boards, configs, work, cache)
        return result
    finally:
        for board in boards:
            board.stop()


STEADY = (0.25, 0.75)
"""The share of a fleet run's rows between which its host CPU per measurement is counted."""


def fleet_run(fleet, boards, configs, tables_dir: Path, cache: Path) -> dict:
    """One fleet collection of ``configs``: its measurements and trials, its wall time, and the CPU
    time of the host's side and of the boards'; the host's CPU per measurement and per trial also
    between the rows at the :data:`STEADY` shares of the run (once every worker has started and
    before the first ends: what each further measurement costs)."""
    expected, seen, marks, lock = len(configs) * len(fleet), [0, 0], [], threading.Lock()

    def on_row(device: str, row: dict) -> None:
        with lock:
            seen[0] += 1
            seen[1] += row.get("trials") or 0
            if len(marks) < len(STEADY) and seen[0] >= STEADY[len(marks)] * expected:
                marks.append((seen[0], seen[1], own_cpu(boards)))

    cpu_before, boards_before, start = own_cpu(boards), board_cpu(boards), time.perf_counter()
    runs = collect_fleet(fleet, configs, POLICY, tables_dir, cache, on_row=on_row)
    wall = time.perf_counter() - start
    measured = sum(len(r.summary.rows) for r in runs)
    host_cpu_s = own_cpu(boards) - cpu_before
    return {
        "boards": len(boards),
        "measurements": measured,
        "trials": sum(row["trials"] or 0 for r in runs for row in r.summary.rows),
        "wall_s": wall,
        "host_cpu_s": host_cpu_s,
        "host_cpu_ms_per_measurement": 1e3 * host_cpu_s / max(measured, 1),
        **(
            {
                "steady_measurements": marks[1][0] - marks[0][0],
                "host_cpu_ms_per_steady_measurement": 1e3 * (marks[1][2] - marks[0][2]) / (marks[1][0] - marks[0][0]),
                "host_cpu_ms_per_steady_trial": 1e3 * (marks[1][2] - marks[0][2]) / max(marks[1][1] - marks[0][1], 1),
            }
            if len(marks) == len(STEADY) and marks[1][0] > marks[0][0]
            else {}
        ),
        "board_cpu_s": board_cpu(boards) - boards_before,
        "errors": [r.error for r in runs if r.error],
    }


def killed_run(fleet, boards, configs, work: Path, cache: Path) -> dict:
    """The fleet again into a fresh folder, two of its boards killed once a third of their rows are in."""
    tables_dir = work / "killed-tables"

    def kill_half():
        victims = [d.name for d in fleet[: len(fleet) // 2]]
        while sum(len(tables.read(tables_dir, name, columns=["config_id"])) for name in victims) < len(configs) // 3:
            time.sleep(0.05)
        for board in boards[: len(fleet) // 2]:
            board.stop()

    threading.Thread(target=kill_half, daemon=True).start()
    first = collect_fleet(fleet, configs, POLICY, tables_dir, cache)
    for board in boards[: len(fleet) // 2]:
        board.start()
    second = collect_fleet(fleet, configs, POLICY, tables_dir, cache)
    counts = {d.name: tables.read(tables_dir, d.name, where={"status": "ok"}).config_id.value_counts() for d in fleet}
    return {
        "given_up": [r.summary.device for r in first if r.error],
        "second_run_errors": [r.error for r in second if r.error],
        "missing": int(sum(len(configs) - len(c) for c in counts.values())),
        "duplicated": int(sum((c > 1).sum() for c in counts.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--boards", type=int, default=4)
    parser.add_argument("--configs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("docs/results/scale/results") / time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hwloop-scale-") as tmp:
        work = Path(tmp)
        device = load_registry(work).get("local")
        result = {
            "machine": script_record(),
            "load_before": os.getloadavg()[0],
            "tables": table_figures(args, device, work),
        }
        print(json.dumps(result["tables"], indent=1), flush=True)
        if args.boards:
            result["load_before_fleet"] = os.getloadavg()[0]
            result["fleet"] = fleet_figures(args, work)
            print(json.dumps(result["fleet"], indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"→ {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
