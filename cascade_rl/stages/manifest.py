"""The run manifest: `runs/NAME/manifest.json` records each stage's inputs (the paths the cascade gave it), its
resolved config and that config's hash, its outputs, library versions and wall time, so a rerun can skip completed
stages, later stages read the recorded outputs, and anyone can trace a checkpoint back to its data."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from cascade_rl.data.io import atomic_write_json

LIBRARIES = ("cascade-rl", "torch", "transformers", "accelerate", "trl", "peft", "math-verify", "vllm")


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a stage's resolved config: the built config dataclass
    as plain data, defaults included."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class Manifest:
    """Read-modify-write of manifest.json (atomic writes; one cascade process per run directory)."""

    def __init__(self, path: Path, name: str):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"name": name, "stages": {}}

    def stage(self, name: str) -> dict | None:
        return self.data["stages"].get(name)

    def finished_outputs(self) -> dict[str, dict]:
        """stage → its recorded outputs, for every stage that finished."""
        return {name: e["outputs"] for name, e in self.data["stages"].items() if e.get("status") == "done"}

    def is_done(self, name: str, digest: str) -> bool:
        entry = self.stage(name)
        if entry is None or entry.get("status") != "done":
            return False
        if entry["config_hash"] != digest:
            raise ValueError(
                f"{self.path}: stage {name!r} already ran with another config (hash {entry['config_hash']}, now "
                f"{digest}); use a new run name, or delete {entry['dir']} and the stages after it to rerun"
            )
        return True

    def start(self, name: str, *, directory: Path, inputs: dict, config: dict, digest: str) -> None:
        self.data["stages"][name] = {
            "dir": str(directory),
            "status": "running",
            "inputs": inputs,
            "config": config,
            "config_hash": digest,
            "versions": library_versions(),
        }
        atomic_write_json(self.path, self.data)

    def finish(self, name: str, *, outputs: dict, wall_s: float, summary: dict) -> None:
        entry = self.data["stages"][name]
        entry.update(status="done", outputs=outputs, wall_s=round(wall_s, 2), summary=summary)
        atomic_write_json(self.path, self.data)
