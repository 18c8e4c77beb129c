from pathlib import Path

import pytest
from pydantic import ValidationError

from hwloop.registry import Device, Protocol, RegistryError, load_registry

REPO_DEVICES = Path(__file__).resolve().parents[1] / "devices"

PI_TARGET = "{kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a72}"
GROUPS = f"""\
groups:
  boards:
    user: pi
    key: ~/.ssh/id_ed25519
    cc: aarch64-linux-gnu-gcc
    protocol: {{threads: 4, cpus: [0, 1, 2, 3], repeat: 7}}
devices:
  a:
    group: boards
    host: a.local
    target: {PI_TARGET}
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def error(tmp_path: Path, files: dict[str, str]) -> str:
    with pytest.raises(RegistryError) as caught:
        load_registry(write(tmp_path, files))
    return str(caught.value)


def device(name: str, fields: str) -> str:
    return f"devices:\n  {name}:\n" + "".join(f"    {line}\n" for line in fields.strip().splitlines())


def test_builtin_local_device_without_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HWLOOP_REGISTRY", raising=False)
    registry = load_registry()
    assert list(registry.devices) == ["local"]
    local = registry.get("local")
    assert local.transport == "local" and local.host is None and local.source is None
    assert local.target == {"kind": "llvm", "mcpu": "host"}
    assert local.protocol == Protocol(threads=1, cpus=[0])
    assert local.protocol.repeat == Protocol().repeat and local.description == "this machine"
    assert registry.groups == {}


def test_shipped_examples_load():
    registry = load_registry(REPO_DEVICES)
    assert {"pi4", "pi5", "orin-nano-cpu", "orin-nano-gpu", "xeon", "local"} <= set(registry.devices)
    assert registry.groups["raspberry-pi"] == ["pi4", "pi5"]
    assert registry.groups["jetson-orin-nano"] == ["orin-nano-cpu", "orin-nano-gpu"]
    remote = [d for d in registry.devices.values() if d.name != "local"]
    assert all(d.transport == "ssh" and d.host and d.user and d.key.startswith("~") for d in remote)
    assert registry.get("pi4").target["mcpu"] == "cortex-a72"
    assert registry.get("pi5").target == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a76",
        "num-cores": 4,
    }
    cpu, gpu = registry.get("orin-nano-cpu"), registry.get("orin-nano-gpu")
    assert cpu.target["mattr"] == ["+neon"] and cpu.target["num-cores"] == 6
    assert gpu.target["kind"] == "nvptx" and gpu.target["mcpu"] == "sm_87"
    assert cpu.cc == gpu.cc == "aarch64-linux-gnu-gcc"
    assert registry.get("xeon").target["mcpu"] == "skylake-avx512"
    assert registry.get("pi4").source.endswith("raspberry-pi.yaml")


def test_repo_root_uses_devices_folder(monkeypatch):
    monkeypatch.chdir(REPO_DEVICES.parent)
    monkeypatch.delenv("HWLOOP_REGISTRY", raising=False)
    assert "pi4" in load_registry().devices


def test_group_inheritance_and_protocol_merge(tmp_path):
    registry = load_registry(
        write(
            tmp_path,
            {
                "boards.yaml": GROUPS,
                "more.yml": device(
                    "b",
                    f"""
group: boards
host: 192.0.2.7
user: admin
target: {PI_TARGET}
protocol: {{repeat: 30}}
""",
                ),
            },
        )
    )
    a, b = registry.get("a"), registry.get("b")
    assert a.transport == "ssh" and a.user == "pi" and a.key == "~/.ssh/id_ed25519" and a.cc == "aarch64-linux-gnu-gcc"
    assert a.protocol.repeat == 7 and a.protocol.threads == 4
    assert b.user == "admin"
    assert b.protocol.repeat == 30 and b.protocol.threads == 4 and b.protocol.cpus == [0, 1, 2, 3]
    assert b.protocol.warmup == 10 and b.protocol.sentinel == 1.25  # the default of several threads
    assert b.source == str(tmp_path / "more.yml")
    assert registry.groups == {"boards": ["a", "b"]}


def test_the_sentinel_s_default_depends_on_the_threads_and_a_value_given_wins():
    assert Protocol().sentinel == 1.1 and Protocol(threads=2).sentinel == 1.25
    assert Protocol(threads=2, sentinel=1.5).sentinel == 1.5 and Protocol(sentinel=None).sentinel is None


def test_select_by_group_and_name(tmp_path):
    registry = load_registry(
        write(
            tmp_path,
            {
                "boards.yaml": GROUPS,
                "z.yaml": device(
                    "b",
                    f"""
group: boards
host: b.local
target: {PI_TARGET}
""",
                ),
            },
        )
    )
    assert [d.name for d in registry.select(["local", "boards", "a"])] == ["local", "a", "b"]
    assert [d.name for d in registry.select("boards")] == ["a", "b"]
    with pytest.raises(RegistryError, match="unknown device or group 'nope'.*local.*boards"):
        registry.select(["nope"])
    with pytest.raises(RegistryError, match="unknown device 'nope'; known devices: local, a, b"):
        registry.get("nope")


def test_env_registry_and_file_redefines_local(tmp_path, monkeypatch):
    write(
        tmp_path,
        {
            "local.yaml": device(
                "local",
                """
transport: local
target: {kind: llvm, mcpu: host}
protocol: {repeat: 3, cpus: [1]}
""",
            )
        },
    )
    monkeypatch.setenv("HWLOOP_REGISTRY", str(tmp_path))
    monkeypatch.chdir(REPO_DEVICES.parent)
    registry = load_registry()
    assert list(registry.devices) == ["local"]
    assert registry.get("local").protocol.repeat == 3 and registry.get("local").protocol.cpus == [1]
    assert registry.get("local").source == str(tmp_path / "local.yaml")


def test_missing_registry_folder(tmp_path):
    with pytest.raises(RegistryError, match="does-not-exist: registry folder does not exist"):
        load_registry(tmp_path / "does-not-exist")


def test_ssh_transport_is_the_default_with_a_host():
    pi = Device(name="pi", host="pi.local", user="pi", target={"kind": "llvm"})
    assert pi.transport == "ssh" and pi.port == 22 and pi.python == "python3"
    with pytest.raises(ValidationError):
        pi.__setattr__("host", "other")


GOOD = f"host: pi.local\nuser: pi\ntarget: {PI_TARGET}"


@pytest.mark.parametrize(
    "fields, field, message",
    [
        (
            GOOD + "\nprotocol: {repeat: lots}",
            "protocol.repeat",
            "Input should be a valid integer, unable to parse string as an integer",
        ),
        (GOOD + "\nprotocol: {repeat: 0}", "protocol.repeat", "greater than or equal to 1"),
        (GOOD + "\nprotocol: {max_wait: -0.1}", "protocol.max_wait", "greater than or equal to 0"),
        (GOOD + "\nprotocol: {cpus: []}", "protocol.cpus", "at least 1 item"),
        (GOOD + "\nprotocol: {cpus: [0, -1]}", "protocol.cpus", "non-negative"),
        (GOOD + "\nprotocol: {cpus: [1, 1]}", "protocol.cpus", "each CPU is listed once"),
        (GOOD + "\nprotocol: {threads: 3, cpus: [0, 1]}", "protocol.cpus", "threads (3) exceeds"),
        (GOOD + "\nprotocol: {flush: true}", "protocol", "it needs number 1 and min_repeat_ms 0 (not 10 and 10)"),
        (
            "host: g.local\nuser: u\ntarget: {kind: cuda}\nprotocol: {flush: true, number: 1, min_repeat_ms: 0}",
            "protocol",
            "`flush` empties CPU caches: a 'cuda' target cannot use it",
        ),
        (GOOD + "\nprotocol: {repaet: 5}", "protocol.repaet", "unknown field (known fields: warmup, number, repeat"),
        (GOOD + "\nhots: x", "hots", "unknown field (known fields: transport, host"),
        (GOOD + "\nport: 70000", "port", "less than or equal to 65535"),
        (
            "host: pi.local\nuser: pi\ntarget: llvm -mcpu=cortex-a72",
            "target",
            "a TVM target is a mapping, not a string: write e.g. {kind: llvm, mtriple: aarch64-linux-gnu",
        ),
        ("host: pi.local\nuser: pi\ntarget: {mcpu: cortex-a72}", "target", "needs a string `kind`"),
        ("host: pi.local\nuser: pi\ntarget: {kind: llvm, mcpu: !!binary aGk=}", "target", "holds only strings"),
        ("host: pi.local\nuser: pi", "target", "Field required"),
        ("transport: ssh\nuser: pi\ntarget: {kind: llvm}", "host", "an ssh device needs `host`"),
        ("host: pi.local\ntarget: {kind: llvm}", "user", "an ssh device needs `user`"),
        ("transport: local\nkey: ~/.ssh/id\ntarget: {kind: llvm}", "key", "a local device has no `key`"),
        ("transport: serial\ntarget: {kind: llvm}", "transport", "Input should be 'local', 'ssh' or 'tracker'"),
        ("target: {kind: llvm}", "transport", "Field required"),
        (GOOD + "\npassword: hunter2", "password", "passwords are never stored in the registry"),
        (GOOD + "\npassphrase: hunter2", "passphrase", "use `key:` (a private key file) or an SSH agent"),
        (GOOD + "\nsource: elsewhere.yaml", "source", "set by hwloop"),
        (GOOD + "\ngroup: missing", "group", "no group 'missing' in the registry"),
    ],
)
def test_bad_device_fields(tmp_path, fields, field, message):
    text = error(tmp_path, {"pi.yaml": device("pi4", fields)})
    assert f"{tmp_path / 'pi.yaml'}: device 'pi4': field '{field}': " in text
    assert message in text
    assert "Traceback" not in text


def test_message_format_from_relative_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices").mkdir()
    write(tmp_path / "devices", {"pi.yaml": device("pi4", GOOD + "\nprotocol: {repeat: lots}")})
    with pytest.raises(RegistryError) as caught:
        load_registry()
    assert str(caught.value) == (
        "devices/pi.yaml: device 'pi4': field 'protocol.repeat': "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_all_errors_of_a_device_one_per_line(tmp_path):
    text = error(
        tmp_path, {"pi.yaml": device("pi4", GOOD + "\nport: x\nprotocol: {warmup: -1, number: 0, threads: 0}")}
    )
    lines = text.splitlines()
    assert len(lines) == 4  # the sentinel's default, which depends on threads, is not one of them
    assert {line.split(": field ")[1].split(":")[0] for line in lines} == {
        "'port'",
        "'protocol.warmup'",
        "'protocol.number'",
        "'protocol.threads'",
    }
    assert all(line.startswith(f"{tmp_path / 'pi.yaml'}: device 'pi4': ") for line in lines)


def test_bad_device_name(tmp_path):
    text = error(tmp_path, {"pi.yaml": device("../pi", GOOD)})
    assert "device '../pi': field 'name': a device name is letters, digits" in text
    assert "pi.yaml" in text


def test_error_from_group_names_the_group(tmp_path):
    files = {
        "groups.yaml": "groups:\n  boards:\n    protocol: {repeat: lots}\n    port: 22\n",
        "pi.yaml": device("pi4", GOOD + "\ngroup: boards\nprotocol: {warmup: 1}"),
    }
    text = error(tmp_path, files)
    assert text == (
        f"{tmp_path / 'pi.yaml'}: device 'pi4': field 'protocol.repeat': Input should be a valid "
        f"integer, unable to parse string as an integer (inherited from group 'boards' in "
        f"{tmp_path / 'groups.yaml'})"
    )


@pytest.mark.parametrize(
    "group, field, message",
    [
        ("password: x", "password", "passwords are never stored"),
        ("usr: pi", "usr", "unknown field"),
        ("group: other", "group", "groups do not nest"),
        ("name: x", "name", "a device's name is its key"),
    ],
)
def test_bad_group_fields(tmp_path, group, field, message):
    text = error(tmp_path, {"g.yaml": f"groups:\n  boards:\n    {group}\n"})
    assert f"{tmp_path / 'g.yaml'}: group 'boards': field '{field}': {message}" in text


def test_duplicate_device_across_files_names_both(tmp_path):
    text = error(tmp_path, {"a.yaml": device("pi4", GOOD), "b.yaml": device("pi4", GOOD)})
    assert text == f"{tmp_path / 'b.yaml'}: device 'pi4': also defined in {tmp_path / 'a.yaml'}"


def test_duplicate_group_across_files_names_both(tmp_path):
    text = error(tmp_path, {"a.yaml": "groups:\n  g: {user: a}\n", "b.yaml": "groups:\n  g: {user: b}\n"})
    assert text == f"{tmp_path / 'b.yaml'}: group 'g': also defined in {tmp_path / 'a.yaml'}"


def test_group_and_device_names_must_differ(tmp_path):
    text = error(tmp_path, {"a.yaml": "groups:\n  pi4: {user: a}\n" + device("pi4", GOOD)})
    assert f"{tmp_path / 'a.yaml'}: group 'pi4': a device has the same name" in text


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    text = error(tmp_path, {"pi.yaml": "devices:\n  pi4:\n    host: pi.local\n    target: {kind: llvm\n"})
    assert text.startswith(f"{tmp_path / 'pi.yaml'}: line 5, column 1: not valid YAML")


def test_unsafe_yaml_tag_is_refused(tmp_path):
    text = error(tmp_path, {"pi.yaml": "devices: !!python/object/apply:os.getcwd []\n"})
    assert text.startswith(f"{tmp_path / 'pi.yaml'}: line 1, column 10: not valid YAML")


@pytest.mark.parametrize(
    "text, message",
    [
        ("- pi4\n- pi5\n", "the top level must be a mapping with `devices:` (and optional `groups:`), not a list"),
        ("device:\n  pi4: {}\n", "unknown top-level key(s) 'device'"),
        ("devices: [pi4]\n", "`devices:` must be a mapping of names to fields"),
        ("devices:\n  pi4: pi.local\n", "device 'pi4': expected a mapping of fields"),
        ("devices:\n  5: {}\n", "device 5: names are strings (quote it)"),
        ("groups:\n  g: [a]\n", "group 'g': expected a mapping of default fields"),
    ],
)
def test_bad_file_structure(tmp_path, text, message):
    found = error(tmp_path, {"bad.yaml": text})
    assert found.startswith(f"{tmp_path / 'bad.yaml'}: ") and message in found


def test_empty_and_group_only_files_are_fine(tmp_path):
    registry = load_registry(
        write(tmp_path, {"empty.yaml": "", "groups.yaml": "groups:\n  g: {user: a}\n", "notes.txt": "not: [yaml"})
    )
    assert list(registry.devices) == ["local"] and registry.groups == {"g": []}
    assert registry.select(["g"]) == []


@pytest.mark.parametrize("workdir", ["/", "/home", "~/hwloop", "../other-user", "cache/../../etc"])
def test_work_folders_outside_the_home_are_refused(tmp_path, workdir):
    message = error(
        tmp_path,
        {"boards.yaml": device("pi", f"host: pi.local\nuser: pi\ntarget: {PI_TARGET}\nlink: {{workdir: {workdir!r}}}")},
    )
    assert message.startswith(f"{tmp_path / 'boards.yaml'}: device 'pi': field 'link.workdir': ")
    assert "home" in message
