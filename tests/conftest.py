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
