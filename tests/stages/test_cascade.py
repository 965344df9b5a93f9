"""A small cascade end to end through the CLI: it completes, the manifest is complete, a rerun skips every stage,
and reward after RL beats reward after SFT on a fixed seed."""

import json
from pathlib import Path

import pytest

from cascade_rl.cli import main
from cascade_rl.demo import RECIPE, prepare
from cascade_rl.stages.cascade import STAGE_ORDER

SMALLER: list[str] = []  # the demo recipe as it is: on seed 0 it takes about a minute and a half on 2 idle cores


@pytest.mark.slow
def test_cascade_runs_records_its_lineage_skips_on_rerun_and_rl_helps(tmp_path, capsys):
    paths = prepare(tmp_path / "inputs", seed=0)
    args = ["run", str(RECIPE), *[f"{k}={v}" for k, v in paths.items()], f"runs_dir={tmp_path}", "name=ci", *SMALLER]
    assert main(args) == 0
    run = tmp_path / "ci"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == list(STAGE_ORDER)
    for name, entry in manifest["stages"].items():
        assert entry["status"] == "done" and entry["wall_s"] >= 0 and entry["versions"]["torch"], name
        assert entry["inputs"] and len(entry["config_hash"]) == 16, name
        assert all(Path(p).exists() for p in entry["outputs"].values()), name
    summary = json.loads((run / "06_eval" / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"sft", "mpo", "gspo"}
    assert summary["reward"]["gspo"] > summary["reward"]["sft"], summary

    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == len(STAGE_ORDER)
