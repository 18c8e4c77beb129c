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
    protocol: {warmup: 1, number: 2, repeat: 3, min_repeat_ms: 1, threads: 1, cpus: [0], trials: 2, max_trials: 3,
               max_wait: 1.0, max_steal: 1.0, sentinel: null, retake_scattered: false, batch: 4}
  broken-cc:
    transport: local
    target: {kind: llvm, mcpu: host}
    cc: /nonexistent/cross-gcc
    protocol: {warmup: 1, number: 1, repeat: 2, min_repeat_ms: 1, threads: 1, cpus: [0], trials: 1,
               max_wait: 1.0, max_steal: 1.0, sentinel: null}
"""


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory):
    """A registry whose ``local`` device times with a short protocol that counts no trial as disturbed
    (no sentinel either) and takes no scattered measurement again (a busy test machine would have them taken again), and
    a device whose builds fail."""
    directory = tmp_path_factory.mktemp("registry")
    (directory / "devices.yaml").write_text(FAST_REGISTRY)
    return directory


def _local_space():
    from hwloop.layers import LayerConfig

    return (
        [LayerConfig("conv2d", 16, c, 16, 16, kernel=3, padding=1) for c in range(4, 49)]
        + [
            LayerConfig("conv2d", 8, c, 8, 8, kernel=3, stride=2, padding=1)
            for c in (8, 12, 13, 16, 20, 24, 30, 32, 40)
        ]
        + [LayerConfig("conv2d", 32, c, 8, 8) for c in (8, 15, 16, 23, 24, 32, 40, 48, 64)]
        + [
            LayerConfig("depthwise_conv2d", c, c, 16, 16, kernel=3, padding=1, groups=c)
            for c in (8, 12, 16, 20, 21, 24, 32, 48)
        ]
        + [LayerConfig("linear", 64, c) for c in (10, 16, 24, 33, 48, 64, 100)]
    )


@pytest.fixture(scope="session")
def local_table(registry_dir, cache_dir, tmp_path_factory):
    """A tables folder holding a small ``default``-policy table of the fast ``local`` device,
    measured in this session: convs (3x3, strided, 1x1), depthwise and linear layers with ragged
    and aligned channel counts."""
    from hwloop.collect import collect
    from hwloop.registry import load_registry
    from hwloop.schedules import parse_policy

    tables_dir = tmp_path_factory.mktemp("local-tables")
    summary = collect(
        load_registry(registry_dir).get("local"), _local_space(), parse_policy("default"), tables_dir, cache_dir
    )
    assert summary.measured >= len(summary.rows) - 2, [r["error"] for r in summary.rows if r["status"] != "ok"]
    return tables_dir


@pytest.fixture(scope="session")
def local_predictor(local_table):
    """A :class:`hwloop.predictor.Predictor` fitted on ``local_table`` (with held-out metrics)."""
    from hwloop import tables
    from hwloop.predictor import Predictor

    return Predictor.fit(tables.read(local_table, "local"), "local")


@pytest.fixture(scope="session")
def untuned_dir(registry_dir, cache_dir, tmp_path_factory):
    """A tables folder with two linear layers of the ``local`` device measured under ``untuned``."""
    from hwloop.collect import collect
    from hwloop.layers import LayerConfig
    from hwloop.registry import load_registry
    from hwloop.schedules import parse_policy

    directory = tmp_path_factory.mktemp("untuned")
    configs = [LayerConfig("linear", 64, c) for c in (16, 33)]
    collect(load_registry(registry_dir).get("local"), configs, parse_policy("untuned"), directory, cache_dir)
    return directory


@pytest.fixture(scope="session")
def resnet20_predictor(registry_dir, cache_dir, tmp_path_factory):
    """A Predictor of the fast ``local`` device fitted on a ``default``-policy table of ResNet-20's
    layers at Fashion-MNIST's 28x28 input (dense and sampled channel counts), measured in this session."""
    from hwloop import tables
    from hwloop.collect import collect
    from hwloop.models import resnet20
    from hwloop.predictor import Predictor
    from hwloop.registry import load_registry
    from hwloop.schedules import parse_policy
    from hwloop.tracing import model_space

    tables_dir = tmp_path_factory.mktemp("resnet20-tables")
    configs = model_space(resnet20(10, 1), (1, 1, 28, 28), samples=64)
    collect(load_registry(registry_dir).get("local"), configs, parse_policy("default"), tables_dir, cache_dir)
    return Predictor.fit(tables.read(tables_dir, "local"), "local")


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


def small_cnn(channels: int):
    """Two 3×3 convs around ``channels`` channels at 16 input channels, pooled into 10 classes."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(16, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
