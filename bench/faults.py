"""The fault matrix: each fault of a board, its link, its compiler or the host's disk, injected into
each way hwloop measures, against real OpenSSH boards on loopback.

    .venv/bin/python bench/faults.py run [--faults F,...] [--paths P,...] [--out DIR]
    .venv/bin/python bench/faults.py page

``run`` runs every cell of :mod:`fault_matrix` (tests/fault_matrix.py: what each fault and each
path is, and how rows lost and duplicated are counted), each in a process of its own that is
killed if it outlasts ``--cell-timeout``, prints each cell as it ends and writes ``matrix.json``
(the machine, the commit, the command, the settings and the cells so far) into ``--out`` (default
docs/results/faults/results/<time>) after each cell; run again with the same ``--out`` at the same
commit, it runs only the cells still missing. Counts, not timings: it may share the machine. The full
matrix takes about half an hour on two cores, the seven reboots a minute each. A disk-full cell
needs root (it mounts a tmpfs); without it the cell says so.

``page`` turns every results folder into docs/results/faults/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import fault_matrix  # noqa: E402
from fault_matrix import FAULTS, PATHS, ROOT_ONLY  # noqa: E402

from bench.machine import script_record  # noqa: E402

RESULTS = Path("docs/results/faults")
CELL_TIMEOUT_S = 900.0


def settings() -> dict:
    from hwloop.registry import Link

    return {
        "stall_s": fault_matrix.STALL_S,
        "reboot_s": fault_matrix.REBOOT_S,
        "build_timeout_s": fault_matrix.BUILD_TIMEOUT_S,
        "links_before_hang": fault_matrix.LINKS_BEFORE_HANG,
        "link": {
            "retries": Link().retries,
            "backoff": Link().backoff,
            "connect_timeout": 3,
            "keepalive": 1,
            "stall_timeout": 4,
        },
        "policy": fault_matrix.POLICY.name,
    }


def run_one(args) -> None:
    """``cell FAULT PATH``: one cell, in this process; its JSON on the last line of stdout."""
    cell = fault_matrix.run_cell(args.fault, args.path, args.work, args.cache, args.key)
    print(json.dumps(cell, default=str), flush=True)


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill a cell's process and everything under it (its boards' sshd and their sessions)."""
    try:
        tree = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in [psutil.Process(process.pid), *tree] if process.poll() is None else tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def cell_in_child(fault: str, path: str, root: Path, key: Path, timeout: float) -> dict:
    work = root / f"{fault}-{path}"
    if fault in ROOT_ONLY and os.geteuid() != 0:
        return {
            "fault": fault,
            "path": path,
            "lost": None,
            "duplicated": None,
            "outcome": "not run: needs root (mounts a tmpfs for the tables folder)",
        }
    command = [
        sys.executable,
        __file__,
        "cell",
        fault,
        path,
        "--work",
        str(work),
        "--cache",
        str(root / "cache"),
        "--key",
        str(key),
    ]
    env = {**os.environ, "HOME": str(root / "home")}
    log = open(root / f"{fault}-{path}.log", "w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process)
        subprocess.run(["umount", "-l", str(work / "tables")], capture_output=True)
        return {
            "fault": fault,
            "path": path,
            "lost": None,
            "duplicated": None,
            "outcome": f"the cell did not finish within {timeout:g} s",
        }
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode or not lines:
        tail = (root / f"{fault}-{path}.log").read_text().strip().splitlines()[-1:] or ["no output"]
        return {
            "fault": fault,
            "path": path,
            "lost": None,
            "duplicated": None,
            "outcome": f"the cell failed (exit {process.returncode}): {tail[0][:300]}",
        }
    return json.loads(lines[-1])


def run_all(args) -> None:
    faults = args.faults.split(",") if args.faults else list(FAULTS)
    paths = args.paths.split(",") if args.paths else list(PATHS)
    unknown = [name for name in faults if name not in FAULTS] + [name for name in paths if name not in PATHS]
    if unknown:
        sys.exit(
            f"unknown fault or path: {', '.join(unknown)} (faults: {', '.join(FAULTS)}; paths: {', '.join(PATHS)})"
        )
    out = args.out or RESULTS / "results" / time.strftime("%Y%m%d-%H%M%S")
    result = {"machine": script_record(), "settings": settings(), "faults": FAULTS, "paths": PATHS, "cells": []}
    saved = out / "matrix.json"
    if saved.exists():  # resume: keep the cells a run of the same commit finished
        before = json.loads(saved.read_text())
        if before["machine"]["commit"] != result["machine"]["commit"]:
            sys.exit(
                f"{saved}: machine.commit: written at commit {before['machine']['commit']}, this is "
                f"{result['machine']['commit']}; give another --out"
            )
        result["cells"] = before["cells"]
    done = {(c["fault"], c["path"]) for c in result["cells"]}
    out.mkdir(parents=True, exist_ok=True)
    from boards import keygen

    with tempfile.TemporaryDirectory(prefix="hwloop-faults-") as tmp:
        root = Path(tmp)
        (root / "home" / ".ssh").mkdir(parents=True)
        key = keygen(root / "id_ed25519")
        for fault in faults:
            for path in paths:
                if (fault, path) in done:
                    continue
                cell = cell_in_child(fault, path, root, key, args.cell_timeout)
                result["cells"].append(cell)
                saved.write_text(json.dumps(result, indent=1, default=str) + "\n")
                print(
                    f"{fault:15} {path:13} lost {cell['lost']} duplicated {cell['duplicated']}: {cell['outcome']}",
                    flush=True,
                )
    print(f"→ {saved}")


def page(_args) -> None:
    """docs/results/faults/README.md from the results folders."""
    lines = [
        "# Fault matrix: what a fault costs on each way hwloop measures",
        "",
        "Generated by `python bench/faults.py page` from the folders of `results/`, written by "
        "`python bench/faults.py run` (the cells: `tests/fault_matrix.py`; a few of them run in CI as "
        "`tests/test_faults.py`). Each cell starts real OpenSSH boards on loopback addresses (and, for the "
        "tracker, TVM RPC servers started through them), runs one path, injects one fault on the first board "
        "0.1 s after it wrote its second row (the first for `validate`; a hung compiler from the start), waits "
        "for the run to end, mends the fault and runs the path again.",
        "",
        "- **rows lost**: rows seen in the table while the runs went on, or reported written by the path, "
        "that are not in it at the end (must be 0);",
        "- **rows duplicated**: successful rows beyond one per config (or model) and pass after the fault and "
        "the re-run: in the whole table for paths that resume, within each measuring call for `validate` and "
        "the board rounds (which measure again on purpose); a row timed on a busy device (`quiet` false), "
        "which a collection takes again on purpose, does not count (must be 0).",
        "",
    ]
    folders = sorted((RESULTS / "results").glob("*/matrix.json"), reverse=True)
    for path in folders:
        result = json.loads(path.read_text())
        m, s = result["machine"], result["settings"]
        cells = {(c["fault"], c["path"]): c for c in result["cells"]}
        faults = list(dict.fromkeys(c["fault"] for c in result["cells"]))
        paths = list(dict.fromkeys(c["path"] for c in result["cells"]))
        link = s["link"]
        lines += [
            f"## `{path.parent.name}`",
            "",
            f"{m['cpu_model']} (LLVM CPU {m['llvm_cpu']}, {m['cores']} cores), commit {m['commit']}, "
            f"{m['date']}: `{m['command']}`. Layers and models built with the `{s['policy']}` policy; links "
            f"with hwloop's default retries ({link['retries']}) and backoff ({link['backoff']:g} s, doubling), "
            f"short timeouts (connect {link['connect_timeout']} s, keepalive {link['keepalive']} s, stall "
            f"{link['stall_timeout']} s); builds time out after {s['build_timeout_s']:g} s in the compiler "
            "cells.",
            "",
            "Each cell: rows lost / rows duplicated, then how the faulted run ended and whether a re-run completes.",
            "",
            "| fault | " + " | ".join(f"`{p}`" for p in paths) + " |",
            "|---|" + "---|" * len(paths),
        ]
        for fault in faults:
            row = []
            for p in paths:
                c = cells.get((fault, p))
                row.append(
                    ""
                    if c is None
                    else f"**{_count(c['lost'])} / {_count(c['duplicated'])}** {c.get('summary', c['outcome'])}"
                )
            lines.append(f"| `{fault}` | " + " | ".join(row) + " |")
        lines += [
            "",
            "<details><summary>Every cell's outcome in full</summary>",
            "",
            "| fault | path | lost | duplicated | outcome | cell s |",
            "|---|---|---|---|---|---|",
        ]
        for c in result["cells"]:
            outcome = c["outcome"].replace("|", "\\|")
            lines.append(
                f"| `{c['fault']}` | `{c['path']}` | {_count(c['lost'])} | {_count(c['duplicated'])} | "
                f"{outcome} | {c.get('wall_s', '')} |"
            )
        lines += ["", "</details>", "", "Faults:", ""]
        lines += [f"- `{name}`: {text}" for name, text in result["faults"].items()]
        lines += ["", "Paths:", ""]
        lines += [f"- `{name}`: {text}" for name, text in result["paths"].items()]
        lines.append("")
    (RESULTS / "README.md").write_text("\n".join(lines))
    print(f"→ {RESULTS / 'README.md'}")


def _count(value) -> str:
    return "–" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    run = modes.add_parser("run", help="run the matrix (or some of its faults and paths)")
    run.add_argument("--faults", help=f"comma-separated, of: {', '.join(FAULTS)}")
    run.add_argument("--paths", help=f"comma-separated, of: {', '.join(PATHS)}")
    run.add_argument("--out", type=Path)
    run.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, help="seconds before a cell is killed")
    modes.add_parser("page", help="the results page from the results folders")
    cell = modes.add_parser("cell", help="one cell, in this process (what `run` starts for each cell)")
    cell.add_argument("fault", choices=list(FAULTS))
    cell.add_argument("path", choices=list(PATHS))
    cell.add_argument("--work", type=Path, required=True)
    cell.add_argument("--cache", type=Path, required=True)
    cell.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    {"run": run_all, "page": page, "cell": run_one}[args.mode](args)


if __name__ == "__main__":
    main()
