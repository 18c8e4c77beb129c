import os

import pytest

from hwloop.targets import resolve


@pytest.fixture(scope="session")
def host_target() -> dict:
    return resolve({"kind": "llvm", "mcpu": "host"}, 1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


FAST_REGISTRY = """\
devices:
  local:
    transport: local
    target: {kind: llvm, mcpu: host}
    protocol: {warmup: 1, number: 2, repeat: 3, min_repeat_ms: 1, threads: 1, cpus: [0]}
  broken-cc:
    transport: local
    target: {kind: llvm, mcpu: host}
    cc: /nonexistent/cross-gcc
    protocol: {warmup: 1, number: 1, repeat: 2, min_repeat_ms: 1, threads: 1, cpus: [0]}
"""


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory):
    """A registry whose ``local`` device times with a short protocol, and a device whose builds fail."""
    directory = tmp_path_factory.mktemp("registry")
    (directory / "devices.yaml").write_text(FAST_REGISTRY)
    return directory


@pytest.fixture(scope="session")
def arm64_python():
    """The Python of an emulated aarch64 board (qemu-user-static), made once and cached."""
    from emulated_board import board_python

    return board_python()


@pytest.fixture(scope="session")
def user_key(tmp_path_factory):
    """The SSH key the tests log in to test boards with."""
    from boards import keygen

    return keygen(tmp_path_factory.mktemp("client") / "id_ed25519")


@pytest.fixture
def boards(tmp_path, user_key, monkeypatch):
    """Starts test boards (real sshd on 127.0.0.x): ``boards()`` → a Board; all stopped afterwards.

    ``$HOME`` is a fresh folder, so ``~/.ssh/config`` and ``~/.ssh/known_hosts`` are the test's own."""
    from boards import Board

    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    started = []

    def start():
        started.append(Board(tmp_path / f"board{len(started)}", user_key.with_name(user_key.name + ".pub")))
        return started[-1]

    yield start
    for board in started:
        board.stop()
