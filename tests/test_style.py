"""The tree passes the project's lint and format rules (ruff, configured in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    command = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert command, "ruff is not installed: bash scripts/install --test"
    return subprocess.run([command, *args], cwd=ROOT, capture_output=True, text=True)


def test_lint_passes():
    checked = ruff("check", "--output-format", "concise", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_format_is_applied():
    checked = ruff("format", "--check", ".")
    assert checked.returncode == 0, checked.stdout + checked.stderr
