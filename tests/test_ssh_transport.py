"""The SSH transport against real OpenSSH test boards: host keys, measuring, remote failures, quoting."""

import os
import stat
import subprocess
import time

import pytest
from boards import PYTHON, gone, keygen, write_registry
from tvm import rpc
from typer.testing import CliRunner

from hwloop.builder import BuildJob, build
from hwloop.check import smoke_check
from hwloop.cli import app
from hwloop.layers import LayerConfig
from hwloop.registry import load_registry
from hwloop.runner import Runner
from hwloop.transports import DeviceBusy, Transport, open_transport
from hwloop.transports.ssh import MARKER, BoardError
from hwloop.transports.sshlink import Connection, HostKeyError, device_endpoint

CONV = LayerConfig("conv2d", 4, 4, 8, 8, kernel=3, padding=1)
cli = CliRunner()


def registry(tmp_path, devices: dict) -> tuple:
    directory = write_registry(tmp_path / "registry", devices)
    return directory, load_registry(directory)


def trust(directory, name, *flags, stdin=None):
    return cli.invoke(app, ["devices", "trust", name, "--registry", str(directory), *flags], input=stdin)


def test_unknown_key_is_refused_until_trusted_on_request(boards, user_key, tmp_path):
    board = boards()
    known = tmp_path / "known_hosts"
    directory, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    with pytest.raises(HostKeyError, match=r"unknown host key ssh-ed25519 SHA256:.*hwloop devices trust b1"):
        open_transport(reg.get("b1"))

    declined = trust(directory, "b1", stdin="n\n")
    assert declined.exit_code == 1 and "SHA256:" in declined.stdout and not known.exists()
    assert trust(directory, "b1").exit_code == 1 and not known.exists()  # no terminal, no --yes: nothing written

    accepted = trust(directory, "b1", "--yes")
    assert accepted.exit_code == 0, accepted.output
    assert known.read_text().split()[:2] == board.known_hosts_line().split()[:2]
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert "already trusted" in trust(directory, "b1", "--yes").stdout
    with open_transport(reg.get("b1")) as transport:
        assert transport.fingerprint()["cores"] >= 1


def test_changed_key_is_refused(boards, user_key, tmp_path):
    board, other = boards(), boards()
    known = tmp_path / "known_hosts"
    known.write_text(
        other.known_hosts_line().replace(f"[{other.address}]:{other.port}", f"[{board.address}]:{board.port}")
    )
    directory, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    with pytest.raises(HostKeyError, match="CHANGED"):
        open_transport(reg.get("b1"))
    result = trust(directory, "b1", "--yes")
    assert result.exit_code != 0 and "CHANGED" in result.output and "ssh-keygen -R" in result.output
    assert len(known.read_text().splitlines()) == 1


def answers(session) -> bool:
    """Whether the server answers a call (one that goes to it: device queries may be answered here)."""
    return bool(session.get_function("tvm.rpc.server.workpath")("probe"))


def test_measures_on_a_board_serving_only_hwloop_and_cleans_up(boards, user_key, tmp_path, host_target, cache_dir):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    _, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    device = reg.get("b1")
    built = build(BuildJob(CONV, host_target, "untuned"), cache_dir)
    with open_transport(device) as transport:
        assert isinstance(transport, Transport)
        for port in (transport._forward.port, transport.board["port"]):  # the forward here; the board's loopback
            for key in ("", "not-the-key"):
                with pytest.raises(Exception, match="cannot find server that matches key"):
                    rpc.connect("127.0.0.1", port, key=key)
        assert not any(transport._key in " ".join(p.cmdline()) for p in board.sessions())
        assert answers(transport.connect())
        m = Runner(transport, device.protocol).measure(CONV, built.artifact)
        assert m.status == "ok", m.error
        assert len(m.latencies_ms) == device.protocol.repeat * len(m.trials) and m.check_error <= 1e-4
        fp = transport.fingerprint()
        assert fp["cores"] >= 1 and len(fp["id"]) == 12
        assert (board.home / "work" / "b1" / "agent.py").is_file()
        agent = transport.board["pgid"]
    assert not (board.home / "work" / "b1").exists()
    assert gone(agent)


def test_board_python_without_tvm_gets_a_clear_message(boards, user_key, tmp_path, cache_dir):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    bare = tmp_path / "bare-python"
    bare.write_text('#!/bin/sh\nexec /usr/bin/python3 -I -S "$@"\n')
    bare.chmod(0o755)
    _, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known, python=str(bare))})
    with pytest.raises(
        BoardError, match=r"cannot import (numpy, )?tvm(, cloudpickle)?; install on the board: .*pip install apache-tvm"
    ):
        smoke_check(reg.get("b1"), cache_dir)
    result = cli.invoke(
        app, ["devices", "check", "b1", "--registry", str(tmp_path / "registry"), "--cache", str(cache_dir)]
    )
    assert result.exit_code != 0 and "cannot import" in result.output


def test_devices_check_runs_the_smoke_kernel(boards, user_key, tmp_path, cache_dir):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    directory, _ = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    result = cli.invoke(app, ["devices", "check", "b1", "--registry", str(directory), "--cache", str(cache_dir)])
    assert result.exit_code == 0, result.output
    assert "ran correctly" in result.stdout


@pytest.mark.parametrize("field", ["python", "workdir"])
def test_shell_metacharacters_run_nothing_on_the_board(boards, user_key, tmp_path, field):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    pwned = tmp_path / "pwned"
    evil = f'x\'; touch {pwned}; echo "$(touch {pwned})" `touch {pwned}` && touch {pwned} #'
    fields = board.device("b1", user_key, known)
    if field == "python":
        fields["python"] = evil
    else:
        fields["link"]["workdir"] = f"work/{evil}"
    _, reg = registry(tmp_path, {"b1": fields})
    try:
        with open_transport(reg.get("b1")) as transport:
            assert transport.workdir == f"{board.home}/work/{evil}/b1"
            assert os.path.isdir(transport.workdir)
    except BoardError as exc:
        assert field == "python" and "field 'python'" in str(exc) and "cannot be run" in str(exc)
    assert not pwned.exists()


def test_ssh_config_alias_through_a_proxyjump(boards, user_key, tmp_path):
    jump, board = boards(), boards()
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts_line() + board.known_hosts_line())
    user = board.device("b1", user_key, known)["user"]
    (tmp_path / "home" / ".ssh" / "config").write_text(
        f"Host gateway\n  HostName {jump.address}\n  Port {jump.port}\n  User {user}\n  IdentityFile {user_key}\n"
        f"  UserKnownHostsFile {known}\n\n"
        f"Host lab-board\n  HostName {board.address}\n  Port {board.port}\n  IdentityFile {user_key}\n"
        f"  ProxyJump gateway\n  UserKnownHostsFile {known}\n"
    )
    fields = board.device("b1", user_key, known)
    for name in ("port", "key", "known_hosts"):
        fields.pop(name)
    _, reg = registry(tmp_path, {"b1": {**fields, "host": "lab-board"}})
    with open_transport(reg.get("b1")) as transport:
        assert transport.endpoint.hostname == board.address and transport.endpoint.jump == "gateway"
        assert transport.connect().cpu(0).exist
        assert jump.sessions(), "the connection did not go through the jump host"


def test_a_work_folder_hwloop_did_not_make_is_never_deleted(boards, user_key, tmp_path):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    _, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    folder = board.home / "work" / "b1"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("keep")
    with pytest.raises(BoardError, match=r"field 'link.workdir': .*was not made by hwloop"):
        open_transport(reg.get("b1"))
    assert (folder / "thesis.tex").read_text() == "keep"
    (folder / MARKER).touch()  # as if hwloop made it and lost the board before removing it
    with open_transport(reg.get("b1")):
        assert not (folder / "thesis.tex").exists() and (folder / "agent.py").is_file()


HOLD = """import sys
from hwloop.registry import load_registry
from hwloop.transports import open_transport
transport = open_transport(load_registry(sys.argv[1]).get("b1"))
print(transport.workdir, flush=True)
input()
"""


def test_one_session_per_board_until_the_first_ends_or_dies(boards, user_key, tmp_path, cache_dir):
    board = boards()
    known = tmp_path / "known_hosts"
    known.write_text(board.known_hosts_line())
    directory, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    first = subprocess.Popen(
        [PYTHON, "-c", HOLD, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        workdir = first.stdout.readline().strip()
        assert os.path.isfile(f"{workdir}/agent.py")
        second = cli.invoke(app, ["devices", "check", "b1", "--registry", str(directory), "--cache", str(cache_dir)])
        assert second.exit_code != 0
        assert f"in use by hwloop pid {first.pid}" in second.output and "one hwloop session per board" in second.output
        assert os.path.isfile(f"{workdir}/agent.py")  # the first session's folder was left alone
    finally:
        first.kill()  # dies without closing anything: the board releases its lock when the connection goes
        first.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with open_transport(reg.get("b1")) as transport:
                assert answers(transport.connect())
            break
        except DeviceBusy:
            assert time.monotonic() < deadline, "the lock of a killed session was not released"
            time.sleep(0.2)


def test_known_hosts_with_markers_broken_lines_and_several_key_types(boards, user_key, tmp_path):
    board = boards()
    name, (kind, blob) = f"[{board.address}]:{board.port}", board.known_hosts_line().split()[1:]
    ecdsa = " ".join(keygen(tmp_path / "ecdsa", "ecdsa").with_suffix(".pub").read_text().split()[:2])
    known = tmp_path / "known_hosts"
    directory, reg = registry(tmp_path, {"b1": board.device("b1", user_key, known)})
    ep, link = device_endpoint(reg.get("b1")), reg.get("b1").link
    known.write_bytes(
        f"# boards\n@cert-authority *.lab {ecdsa}\nnot a key line\n{name} ssh-ed25519 AAAA%%\n"
        f"{name} {ecdsa}\n{board.known_hosts_line()}".encode()
        + b"\xff\xfe\n"
    )
    Connection(ep, link).close()  # the board's own Ed25519 line counts; the ECDSA line before it does not conflict
    assert "already trusted" in trust(directory, "b1").stdout

    known.write_text(f"{name} {ecdsa}\n{name} ssh-ed25519 AAAA%%\n")
    with pytest.raises(
        HostKeyError,
        match=r"unknown host key ssh-ed25519 .*files only ecdsa-sha2-nistp256 .*\(line 1\)"
        r".*skipped .*line 2 \(ssh-ed25519 key unreadable",
    ) as refused:
        Connection(ep, link)
    assert "CHANGED" not in str(refused.value)

    known.write_text(f"{board.known_hosts_line()}@revoked * {kind} {blob}\n")
    with pytest.raises(HostKeyError, match=r"REVOKED \(.*known_hosts line 2\)"):
        Connection(ep, link)
    result = trust(directory, "b1", "--yes")
    assert result.exit_code != 0 and "REVOKED" in result.output
    assert len(known.read_text().splitlines()) == 2
