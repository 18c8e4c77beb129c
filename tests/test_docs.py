import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_references_made_from_the_code_are_current():
    """docs/cli.md and devices/README.md's field tables: `scripts/reference` writes them."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
