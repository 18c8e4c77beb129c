"""Turns docs/results/scale/results/*/scale.json (written by ``bench/scale.py``) into this folder's README.md.

.venv/bin/python docs/results/scale/make.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

INTRO = """# hwloop at scale: large tables and fleets of boards

What this benchmark measures:

- **Tables**: a device table filled with synthetic rows of the real schema (conv, pointwise,
  depthwise and linear configs, three rows each, sealed run by run as collections seal them), then
  at that size: `hwloop tables show`, `hwloop collect --space FILE --dry-run` on a space of 8,192
  3×3 convs (what a collection does before its first build: start, read the space and the table,
  plan; the host CPU's LLVM name is read from the cache, where the first use of hwloop on a machine
  keeps it), `hwloop fit`, `hwloop evaluate` and `hwloop report` (time and peak memory; the last two
  in the runs that time them), and how many files the folder holds. Each command
  runs as a user runs it, in a fresh process; where a figure names a median, the short command ran
  three times, and a target counts as met only where every call met it{first_calls}; from
  20261205-075050 on, the commands run before the benchmark reads the table in its own process.
- **Fleets**: real SSH boards on loopback (sshd on 127.0.0.x, on this same host), each timing
  cached builds of tiny convs with a minimal protocol, so that the host's own work per measurement
  shows: the CPU time of hwloop's processes, counted apart from the boards' (their sshd and
  everything under it), for the whole run and per measurement between the run's rows at a quarter
  and at three quarters (every worker started, none finished: what each further measurement costs;
  runs before 20261205-050512 took it as the difference to a run of half the configs, which the
  variation of the workers' start outweighs once a measurement costs a few ms). Then the same fleet with half
  its boards killed a third of the way in, and a re-run: rows missing or duplicated at the end.

The targets: with 100,000 rows, `collect` plans within 2 s, `tables show` answers within 1 s, `fit`
finishes within 2 minutes on 2 cores and the folder holds a few dozen files; a fleet's host spends
at most 20 ms of CPU per measurement; killed boards lose and duplicate nothing.

```bash
.venv/bin/python bench/scale.py --rows 100000 --boards 4 --configs 60
.venv/bin/python docs/results/scale/make.py
```
"""


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _command(record: dict) -> str:
    calls = record.get("calls_s", [record["s"]])
    timing = _s(record["s"]) if len(calls) == 1 else f"{_s(record['s'])} (median of {len(calls)}; first {_s(calls[0])})"
    return f"{timing}{'' if record['ok'] else ' (failed)'}, peak {record['peak_mib'] or 0:.0f} MiB"


def _load(run: dict) -> str:
    """The machine's one-minute load average before each part: what else ran beside the benchmark."""
    parts = [
        f"{label}: {run[key]:.2f}"
        for key, label in (("load_before", "before the tables"), ("load_before_fleet", "before the fleet"))
        if key in run
    ]
    return "one-minute load average " + ", ".join(parts) if parts else "load average not recorded"


def section(path: Path) -> list[str]:
    run = json.loads(path.read_text())
    machine, table = run["machine"], run["tables"]
    lines = [
        f"\n## {path.parent.name}\n",
        f"{machine['cpu_model']} (LLVM CPU {machine['llvm_cpu']}, {machine['cores']} cores), "
        f"{machine['date']}, commit `{machine['commit']}`, `{machine['command']}`; {_load(run)}.\n",
        "| table of one device | figure |",
        "|---|---|",
        f"| rows | {table['rows']:,} |",
        f"| files in the folder | {table['files']} |",
        f"| `hwloop tables show` | {_command(table['tables_show'])} |",
        f"| `hwloop collect --space FILE --dry-run` (8,192 configs) | {_command(table['collect_dry_run'])} |",
        f"| `hwloop fit` ({table['learning_rows']:,} rows) | {_command(table['fit'])} |",
        *(f"| `hwloop {name}` | {_command(table[name])} |" for name in ("evaluate", "report") if name in table),
        f"| start of the CLI (`import hwloop.cli`) | {_s(table['cli_startup_s'])} |",
        f"| in process: read the whole table | {_s(table['read_all_s'])} |",
        f"| in process: read what a predictor learns from | {_s(table['read_learning_rows_s'])} |",
        f"| in process: plan a space of {table['wanted']:,} configs ({table['planned']:,} to measure) "
        f"| {_s(table['plan_s'])} |",
    ]
    fleet = run.get("fleet")
    if fleet:
        killed = fleet["killed"]
        lines += [
            "",
            "| fleet | figure |",
            "|---|---|",
            f"| boards | {fleet['boards']} |",
            f"| measurements (trials) | {fleet['measurements']} ({fleet['trials']}) |",
            f"| wall time | {_s(fleet['wall_s'])} |",
            f"| host CPU per measurement, whole run | {fleet['host_cpu_ms_per_measurement']:.1f} ms |",
            *(
                [
                    f"| host CPU per measurement, between a quarter and three quarters of the rows | "
                    f"{fleet['host_cpu_ms_per_steady_measurement']:.1f} ms "
                    f"({fleet['host_cpu_ms_per_steady_trial']:.1f} ms per trial) |"
                ]
                if "host_cpu_ms_per_steady_measurement" in fleet
                else [
                    f"| host CPU per measurement beyond a run of half the configs | "
                    f"{fleet['host_cpu_ms_per_extra_measurement']:.1f} ms "
                    f"({fleet['host_cpu_ms_per_extra_trial']:.1f} ms per trial) |"
                ]
            ),
            f"| the boards' own CPU | {_s(fleet['board_cpu_s'])} |",
            f"| errors | {len(fleet['errors'])} |",
            f"| half the boards killed: boards given up | {', '.join(killed['given_up']) or 'none'} |",
            f"| after a re-run: rows missing / duplicated | {killed['missing']} / {killed['duplicated']} |",
        ]
    return lines


VERDICT = {True: "yes", False: "no", None: "not measured"}


def _first_calls(runs: list[Path]) -> str:
    """`tables show`'s first call against the next ones, in each run that timed several."""
    timed = []
    for path in reversed(runs):
        run = json.loads(path.read_text())
        calls = run["tables"]["tables_show"].get("calls_s", [])
        if len(calls) > 1:
            low, high = min(calls[1:]), max(calls[1:])
            later = f"{low:.2f} s" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f} s"
            timed.append(f"{path.parent.name} (`{run['machine']['commit']}`): {calls[0]:.2f} s, then {later}")
    if not timed:
        return ""
    return (
        ". `tables show`'s first call after the table is written, then the calls after it: "
        + "; ".join(timed)
        + ". Until the commands took Arrow's memory from the system allocator (f0c1605), mimalloc's"
        " transparent huge pages made a call's kernel time depend on how much memory was free"
    )


def _every_call(record: dict, limit: float) -> tuple[str, bool]:
    """A short command's figure, and whether every call of it kept within ``limit`` seconds."""
    calls = record.get("calls_s", [record["s"]])
    if len(calls) == 1:
        return _s(record["s"]), record["s"] < limit
    return f"{_s(record['s'])} (median of {len(calls)}; slowest {_s(max(calls))})", max(calls) < limit


def targets(path: Path) -> list[str]:
    """The newest run against its targets."""
    run = json.loads(path.read_text())
    table, fleet = run["tables"], run.get("fleet")
    checks = [
        (
            "`hwloop collect --dry-run` (what a collection does before its first build)",
            "within 2 s",
            *_every_call(table["collect_dry_run"], 2),
        ),
        ("`hwloop tables show`", "under 1 s", *_every_call(table["tables_show"], 1)),
        ("`hwloop fit`", "under 2 minutes", _s(table["fit"]["s"]), table["fit"]["s"] < 120),
        ("files in the folder", "a few dozen", str(table["files"]), table["files"] <= 36),
    ]
    if fleet:
        per = fleet.get("host_cpu_ms_per_steady_measurement", fleet.get("host_cpu_ms_per_extra_measurement"))
        lost = fleet["killed"]["missing"] + fleet["killed"]["duplicated"]
        # a run before 20261205-050512: negative where the start of its two runs varied more than the measurements
        measured = per is not None and per > 0
        checks += [
            (
                "fleet host CPU per further measurement",
                "at most 20 ms",
                f"{per:.1f} ms" if measured else "not measured",
                per <= 20 if measured else None,
            ),
            (
                "two of four boards killed, then a re-run",
                "nothing lost or duplicated",
                f"{fleet['killed']['missing']} missing, {fleet['killed']['duplicated']} duplicated",
                lost == 0,
            ),
        ]
    lines = [
        f"\n## The newest run ({path.parent.name}) against the targets\n",
        f"With {table['rows']:,} rows in the table:\n",
        "| check | target | result | met |",
        "|---|---|---|---|",
    ]
    return lines + [f"| {check} | {target} | {result} | {VERDICT[met]} |" for check, target, result, met in checks]


def main() -> None:
    runs = sorted((HERE / "results").glob("*/scale.json"), reverse=True)  # the newest first
    lines = [INTRO.format(first_calls=_first_calls(runs))]
    if runs:
        lines += targets(runs[0])
        lines.append("\nEvery run, the newest first:")
    for path in runs:
        lines += section(path)
    if not runs:
        lines.append("\nNo run is recorded in `results/` yet.")
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
