"""`make gpu-check`: every `gpu` test in one pytest run on a machine with a CUDA GPU, then a table of what ran.

Prints the device, torch / CUDA / transformers / vLLM / DeepSpeed versions, and one row per test: passed, failed or
skipped (with the reason, e.g. vLLM not installed). Exit status: pytest's. Meant to finish in a few minutes.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version(name: str) -> str:
    for dist in (name, f"{name}-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def device() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return f"{torch.cuda.get_device_name(0)} × {torch.cuda.device_count()} (CUDA {torch.version.cuda})"


def outcomes(report: Path) -> list[tuple[str, str, float, str]]:
    """(test id, outcome, seconds, reason) per test case of a JUnit XML report."""
    rows = []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                reason = (found.get("message") or "").splitlines()[0][:80] if found.get("message") else ""
        rows.append((name, outcome, float(case.get("time", 0.0)), reason))
    return rows


def main() -> int:
    print(f"device: {device()}")
    print(", ".join(f"{n} {version(n)}" for n in ("torch", "transformers", "accelerate", "vllm", "deepspeed")))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "gpu.xml"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
        status = subprocess.call(command, cwd=ROOT, env=env)
        rows = outcomes(report) if report.exists() else []
    width = max((len(r[0]) for r in rows), default=10)
    print(f"\n{'test':{width}s}  outcome  seconds  note")
    for name, outcome, seconds, reason in rows:
        print(f"{name:{width}s}  {outcome:7s}  {seconds:7.1f}  {reason}")
    return status


if __name__ == "__main__":
    sys.exit(main())
