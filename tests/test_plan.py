"""The memory plan of `cascade-rl validate --gpus N --gpu-memory G` (cascade_rl/plan.py)."""

import json
from pathlib import Path

import pytest

from cascade_rl.cli import main
from cascade_rl.config import ConfigError, load_config
from cascade_rl.plan import GIB, plan_memory
from cascade_rl.stages.cascade import CascadeConfig, plan_stages

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "internvl3_5"

# The hardware each InternVL3.5 recipe is documented to fit (docs/recipes.md): the fewest GPUs, of 80 GiB
# (A100 / H100 80 GB) or 140 GiB (H200), the plan fits.
DOCUMENTED = {
    "1b": (1, 80),
    "2b": (1, 80),
    "4b": (2, 80),
    "8b": (4, 80),
    "14b": (8, 80),
    "30b_a3b": (8, 140),
    "38b": (16, 140),
    "241b_a28b": (40, 140),  # trainers only: its rollout servers run on GPUs of their own (test below)
}


def recipe_plan(recipe: Path, gpus: int, gpu_memory: float, overrides=()):
    config = load_config(CascadeConfig, recipe, list(overrides))
    stages = [(plan.name, plan.build()) for plan in plan_stages(config)]
    return plan_memory(config.model_path, config.name, stages, gpus, gpu_memory)


def validate(capsys, recipe: Path, gpus: int, gpu_memory: float, *overrides) -> tuple[int, str, str]:
    code = main(["validate", str(recipe), *overrides, "--gpus", str(gpus), "--gpu-memory", str(gpu_memory)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.filterwarnings("ignore:GSPO with clip_low")
def test_8b_plan_by_hand(capsys):
    # InternVL3.5-8B model card: vision 0.3e9 + language 8.2e9 = 8.5e9 parameters; Qwen3-8B: h 4096, 36 layers.
    # 4 GPUs × 80 GiB. MPO under ZeRO-2 (mpo.deepspeed: zero2.json), nothing frozen: T = P = 8.5e9.
    p, t_gspo, n = 8.5e9, 8.2e9, 4
    mpo = {"weights": 2 * p, "gradients": 2 * p / n, "optimizer": 12 * p / n}  # 17e9, 4.25e9, 25.5e9 bytes
    # GSPO under ZeRO-3 with the vision tower frozen: T = 8.2e9; colocated vLLM takes 0.5 × 80 GiB.
    gspo = {"weights": 2 * p / n, "gradients": 2 * t_gspo / n, "optimizer": 12 * t_gspo / n, "engine": 40 * GIB}
    per_token = 34 * 4096 * 36  # bf16 activations per token: 34 h L
    plan = recipe_plan(RECIPES / "8b_cascade.yaml", n, 80)
    by_stage = {s.stage: s for s in plan.stages}
    assert by_stage["rollout"].parts == {"engine": 40 * GIB}
    assert by_stage["mpo"].parts == pytest.approx(mpo, rel=1e-12)
    assert by_stage["gspo"].parts == pytest.approx(gspo, rel=1e-12)
    assert by_stage["mpo"].tokens == 1 * 2 * 16384  # per_device_batch × (prompt + 2 completions ≤ 2 max_length)
    assert by_stage["gspo"].tokens == 16 * 32768 + 13 * 256  # n × max_new_tokens + (12 tiles + thumbnail) × 256
    assert by_stage["mpo"].activations == pytest.approx(per_token * 32768)
    assert plan.fits and plan.skipped == ["eval"]

    code, out, _ = validate(capsys, RECIPES / "8b_cascade.yaml", n, 80)
    assert code == 0
    held = sum(mpo.values()) / GIB
    assert f"mpo: 4 GPU(s), ZeRO-2: weights {2 * p / GIB:.1f}, gradients {2 * p / n / GIB:.1f}" in out
    assert f"= {held:.1f}: fits" in out
    assert "gspo: 4 GPU(s), ZeRO-3" in out and "activations (estimate)" in out


@pytest.mark.filterwarnings("ignore:GSPO with clip_low")
@pytest.mark.parametrize("size", sorted(DOCUMENTED))
def test_documented_hardware_fits_and_half_does_not(capsys, size):
    gpus, memory = DOCUMENTED[size]
    recipe = RECIPES / f"{size}_cascade.yaml"
    code, out, err = validate(capsys, recipe, gpus, memory)
    assert code == 0, err
    assert "DOES NOT FIT" not in out
    if gpus > 1:  # one GPU has no half
        code, out, err = validate(capsys, recipe, gpus // 2, memory)
        assert code == 2 and "the memory plan does not fit" in err
        assert f"use --gpus {gpus}" in err  # the refusal names the documented count


@pytest.mark.filterwarnings("ignore:GSPO with clip_low")
def test_241b_trains_on_40_gpus_and_samples_from_tensor_parallel_servers(capsys):
    # 5.5e9 + 235.1e9 = 240.6e9 parameters (the card's total, 240.7B, is rounded apart); in bf16 448.2 GiB, more
    # than a GPU: rollouts come from vLLM servers on GPUs of their own. A server GPU gives vLLM 0.9 × 140 GiB and
    # keeps 10% of that for the KV cache: 113.4 GiB for weights; 448.2 / 2 = 224.1 does not fit, / 4 = 112.0 does.
    p, t, n = 240.6e9, 235.1e9, 40  # GSPO trains all but the frozen vision tower
    assert 2 * p / 4 <= 0.9 * 0.9 * 140 * GIB < 2 * p / 2
    plan = recipe_plan(RECIPES / "241b_a28b_cascade.yaml", n, 140)
    by_stage = {s.stage: s for s in plan.stages}
    assert by_stage["rollout"].parts == {} and by_stage["rollout"].fits
    # ZeRO-3 on 40 ranks: bf16 weights 2 P / N, gradients 2 T / N, fp32 master + Adam 12 T / N; no engine.
    gspo = {"weights": 2 * p / n, "gradients": 2 * t / n, "optimizer": 12 * t / n}
    assert by_stage["gspo"].parts == pytest.approx(gspo, rel=1e-12)
    code, out, _ = validate(capsys, RECIPES / "241b_a28b_cascade.yaml", n, 140)
    assert code == 0
    assert (
        out.count(f"{2 * p / GIB:.1f} GiB of bf16 weights, {2 * p / 4 / GIB:.1f} per GPU at --tensor-parallel-size 4")
        == 2
    )
    # 80 GiB server GPUs: 0.81 × 80 = 64.8 GiB for weights; 448.2 / 8 = 56.0 fits, / 4 = 112.0 does not.
    code, out, _ = validate(capsys, RECIPES / "241b_a28b_cascade.yaml", 80, 80)
    assert "--tensor-parallel-size 8`" in out


@pytest.mark.filterwarnings("ignore:GSPO with clip_low")
def test_refusal_names_the_setting(capsys):
    # 8B MPO under DDP: fp32 weights 4 P + gradients 4 P + Adam 8 P = 16 × 8.5e9 = 126.7 GiB > 80 on every rank;
    # ZeRO-2 on 4 GPUs holds 46.75e9 B = 43.5 GiB (test above): the fix is the DeepSpeed config.
    code, out, err = validate(capsys, RECIPES / "8b_cascade.yaml", 4, 80, "mpo.deepspeed=null")
    assert code == 2
    assert f"mpo: 4 GPU(s), DDP: weights {4 * 8.5e9 / GIB:.1f}" in out and "no mpo.deepspeed: DDP" in out
    assert "mpo does not fit 80 GiB per GPU" in err and "set mpo.deepspeed: recipes/deepspeed/zero2.json" in err
    # GSPO colocated vLLM: 8.5e9 × 2 B = 15.8 GiB of weights do not fit 0.2 × 80 GiB with 10% kept for the KV
    # cache; 15.8 / 0.9 / 80 = 0.22 → 0.25.
    code, _, err = validate(capsys, RECIPES / "8b_cascade.yaml", 4, 80, "gspo.vllm.gpu_memory_utilization=0.2")
    assert code == 2 and "set gspo.vllm.gpu_memory_utilization: 0.25" in err


def test_plan_from_a_local_checkpoint_counts_its_parameters(tiny_internvl, tiny_checkpoint):
    from cascade_rl.stages.mpo import MPOConfig

    model, _ = tiny_internvl
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    text = model.config.text_config
    config = MPOConfig(model_path=str(tiny_checkpoint), pairs="pairs.jsonl", freeze_vision=True)
    plan = plan_memory(str(tiny_checkpoint), "tiny", [("mpo", config)], 2, 1.0)
    (mpo,) = plan.stages
    # DDP: fp32 weights of everything, fp32 gradients and Adam m, v of what trains; nothing divided by the 2 ranks.
    assert mpo.parts == {"weights": 4 * total, "gradients": 4 * (total - vision), "optimizer": 8 * (total - vision)}
    assert mpo.bytes_per_token == 34 * text.hidden_size * text.num_hidden_layers
    assert plan.size.source.endswith("config.json") and plan.size.vision == vision


def test_zero3_offload_moves_the_optimizer_off_the_gpu(tmp_path):
    from cascade_rl.stages.mpo import MPOConfig

    ds = tmp_path / "zero3_offload.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    config = MPOConfig(model_path="/models/InternVL3_5-2B-Instruct-HF", pairs="p.jsonl", deepspeed=str(ds))
    (mpo,) = plan_memory(config.model_path, "x", [("mpo", config)], 8, 80).stages
    p = 2.3e9  # 0.3e9 vision + 2.0e9 language (model card)
    assert mpo.sharding == "ZeRO-3 (offload optimizer)"
    assert mpo.parts == pytest.approx({"weights": 2 * p / 8, "gradients": 2 * p / 8, "optimizer": 0.0})


@pytest.mark.filterwarnings("ignore:GSPO with clip_low")
def test_unplannable_inputs_are_refused(capsys, tmp_path):
    from cascade_rl.stages.mpo import MPOConfig

    config = MPOConfig(model_path="/models/my-model", pairs="p.jsonl")
    with pytest.raises(ConfigError, match="model_path /models/my-model: not a local checkpoint directory"):
        plan_memory(config.model_path, "mine", [("mpo", config)], 8, 80)
    missing = MPOConfig(model_path="/models/InternVL3_5-8B", pairs="p.jsonl", deepspeed=str(tmp_path / "no.json"))
    with pytest.raises(ConfigError, match="mpo.deepspeed: no DeepSpeed config file"):
        plan_memory(missing.model_path, "x", [("mpo", missing)], 8, 80)
    assert main(["validate", str(RECIPES / "1b_cascade.yaml"), "--gpus", "8"]) == 2
    assert "--gpus needs --gpu-memory" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["sft", "mpo", "gspo"])
def test_a_trainer_refuses_a_launch_unlike_its_declared_sharding(capsys, tmp_path, stage):
    # One process without DeepSpeed, while the config declares ZeRO-3: refused before any model loads.
    data = {"sft": "data", "mpo": "pairs", "gspo": "prompts"}[stage]
    args = [stage, "model_path=/nowhere", f"{data}=x.jsonl", f"out_dir={tmp_path}"]
    assert main([*args, "deepspeed=recipes/deepspeed/zero2.json"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{stage}.deepspeed: recipes/deepspeed/zero2.json (ZeRO-2), but this run is launched without DeepSpeed" in err
    )
    assert "accelerate launch --config_file recipes/deepspeed/accelerate_zero2.yaml" in err
