"""The examples run as a user would run them (a subprocess from the repository root)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("custom_reward.py", "total: [1.0, 0.1]"),  # 0.9·math + 0.1·brevity: right and short; wrong but short
        ("custom_dataset.py", "3 usable rows; skipped: 1"),
        pytest.param("one_stage_from_python.py", '"steps_run": 4', marks=pytest.mark.slow),  # trains a stage
    ],
)
def test_example_runs(script, expect, tmp_path):
    args = [sys.executable, str(ROOT / "examples" / script)]
    if script != "custom_reward.py":
        args.append(str(tmp_path / "out"))
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout
