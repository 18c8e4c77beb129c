import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from hwloop.cli import app
from hwloop.cli.collect import measured_text

runner = CliRunner()

SPACE = """\
layers:
  - op: conv2d
    in_channels: 4
    out_channels: [4, 6]
    input_hw: 8
    kernel: 3
    stride: 1
    groups: 1
  - op: linear
    in_channels: 16
    out_channels: 3
"""


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_every_command_summarises_itself_in_one_line():
    """The command list shows a docstring's first paragraph with its line breaks kept."""
    import inspect

    def commands(typer_app):
        yield from typer_app.registered_commands
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance)

    summaries = {c.callback.__name__: inspect.getdoc(c.callback).split("\n\n")[0] for c in commands(app)}
    assert len(summaries) > 10 and not {name: s for name, s in summaries.items() if "\n" in s}


def test_help_rewraps_docstring_paragraphs_and_keeps_examples_apart():
    result = runner.invoke(app, ["prune", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines()]
    assert (
        "Fine-tuning distils from the dense model; the output folder holds weights, plan and an ExportedProgram."
        in lines
    )
    assert "hwloop prune --device local --model resnet20 --budget 0.5" in lines


def test_devices_list_and_show(registry_dir):
    listed = json.loads(invoke("devices", "list", "--registry", registry_dir, "--json").stdout)
    assert {d["name"] for d in listed} == {"local", "broken-cc"}
    shown = json.loads(invoke("devices", "show", "local", "--registry", registry_dir).stdout)
    assert shown["resolved_target"]["mcpu"] != "host" and shown["protocol"]["repeat"] == 3


def test_devices_check_runs_a_kernel(registry_dir, cache_dir):
    result = invoke("devices", "check", "local", "--registry", registry_dir, "--cache", cache_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["latency_ms"] > 0 and report["check_error"] <= 1e-4


def test_unknown_device_and_bad_registry_are_clear_errors(registry_dir, tmp_path):
    result = invoke("devices", "show", "nope", "--registry", registry_dir)
    assert result.exit_code == 2 and "unknown device 'nope'" in result.stderr
    (tmp_path / "bad.yaml").write_text("devices:\n  pi:\n    host: pi.local\n    user: pi\n    target: llvm\n")
    result = invoke("devices", "list", "--registry", tmp_path)
    assert result.exit_code == 2
    assert "bad.yaml" in result.stderr and "'pi'" in result.stderr and "target" in result.stderr
    assert "Traceback" not in result.output


def test_collect_space_then_tables(registry_dir, cache_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    tables = tmp_path / "tables"
    args = (
        "collect",
        "-d",
        "local",
        "--space",
        space,
        "--registry",
        registry_dir,
        "--tables",
        tables,
        "--cache",
        cache_dir,
    )
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["planned"], summary["measured"], summary["failed"]) == (3, 3, 0)
    assert summary["sentinel_ms"] is None and summary["disturbed"] >= 0  # the test device times no sentinel

    again = json.loads(invoke(*args, "--json").stdout)
    assert (again["skipped"], again["measured"]) == (3, 0)

    shown = json.loads(invoke("tables", "show", "local", "--tables", tables, "--json").stdout)
    assert {r["op"]: r["configs"] for r in shown} == {"conv2d": 2, "linear": 1}

    csv = tmp_path / "local.csv"
    assert invoke("tables", "export", "local", "--csv", csv, "--tables", tables).exit_code == 0
    assert len(pd.read_csv(csv)) == 3


def test_a_collection_s_summary_says_what_it_dropped_and_how_slow_the_sentinel_ran():
    record = {"planned": 4, "skipped": 0, "measured": 4, "retaken": 1, "failed": 0, "disturbed": 0, "sentinel_ms": None}
    assert measured_text(record) == (
        "planned 4, already measured 0, measured now 4 (1 taken again: a busy or slow device, or scattered trials), "
        "failed 0"
    )
    assert measured_text({**record, "disturbed": 1}).endswith("; 1 trial dropped as disturbed")
    said = measured_text({**record, "disturbed": 7, "sentinel_ms": [0.010, 0.013]})
    assert said.endswith(
        "; 7 trials dropped as disturbed (the sentinel ran up to 1.30× its fastest around the trials kept)"
    )


def test_collect_refuses_bad_arguments(registry_dir, tmp_path):
    assert "exactly one of --model and --space" in invoke("collect", "-d", "local", "--registry", registry_dir).stderr
    result = invoke("collect", "-d", "local", "-m", "resnet20", "--schedule", "fast", "--registry", registry_dir)
    assert result.exit_code == 2 and "unknown schedule policy 'fast'" in result.stderr
    (tmp_path / "space.yaml").write_text("layers:\n  - op: conv2d\n    in_channels: x\n")
    result = invoke("collect", "-d", "local", "--space", tmp_path / "space.yaml", "--registry", registry_dir)
    assert result.exit_code == 2 and "space.yaml" in result.stderr
    result = invoke("collect", "-d", "local", "-m", tmp_path, "--registry", registry_dir)
    assert result.exit_code == 2 and "output folder of `hwloop prune`" in " ".join(result.stderr.split())


def test_collect_notes_a_local_device_whose_threads_take_every_cpu(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: a device cannot time several threads here")
    devices = {
        "every-cpu": {
            "transport": "local",
            "target": {"kind": "llvm", "mcpu": "host"},
            "protocol": {"threads": len(cpus), "cpus": cpus},
        },
        "one-free": {
            "transport": "local",
            "target": {"kind": "llvm", "mcpu": "host"},
            "protocol": {"threads": len(cpus) - 1, "cpus": cpus[1:]},
        },
    }
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "devices.yaml").write_text(json.dumps({"devices": devices}))
    (tmp_path / "space.yaml").write_text(SPACE)
    for name, noted in (("every-cpu", True), ("one-free", False)):
        plan = ["collect", "-d", name, "--space", tmp_path / "space.yaml", "--dry-run", "--registry", registry]
        result = invoke(*plan, "--tables", tmp_path / "tables")
        assert result.exit_code == 0, result.output
        said = " ".join(result.stderr.split())
        assert (f"{name} times {len(cpus)} threads on every CPU this machine gives hwloop" in said) is noted, said
