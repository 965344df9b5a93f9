"""The stages with engine=vllm on the tiny InternVL (head_dim 32), as a user runs them: the offline rollout stage
(vLLM reads the checkpoint itself) and GSPO steps whose rollouts come from a colocated engine that takes the
trainer's weights after every optimizer step."""

import pytest
import torch
from stages.conftest import gspo_config, write_prompts

from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.models import load_policy
from cascade_rl.rollout.vllm import VLLMEngine
from cascade_rl.rollout.vllm_support import VLLMSettings
from cascade_rl.stages.gspo import GSPOTrainer
from cascade_rl.stages.metrics import read_metrics
from cascade_rl.stages.offline import RolloutStageConfig, run_rollouts

pytestmark = pytest.mark.vllm

VLLM = {"kv_cache_gib": 0.25, "dtype": "float32", "enforce_eager": True, "max_model_len": 1024}


def test_rollout_stage_with_vllm_stores_every_sample(hd32_checkpoint, tmp_path):
    from cascade_rl.config import from_dict

    prompts = write_prompts(tmp_path, n=3)
    config = from_dict(
        RolloutStageConfig,
        {
            "model_path": str(hd32_checkpoint),
            "prompts": str(prompts),
            "image_root": str(tmp_path / "images"),
            "out_dir": str(tmp_path / "offline"),
            "engine": "vllm",
            "max_tiles": 4,
            "sampling": {"n": 4, "max_new_tokens": 6, "seed": 0},
            "vllm": VLLM,
        },
    )
    summary = run_rollouts(config)
    assert summary["rollouts"] == 12 and summary["prompts"] == 3
    records = list(RolloutStore(tmp_path / "offline" / "rollouts", readonly=True).iter_records())
    assert sorted((r.prompt_id, r.sample_index) for r in records) == [(f"q{i}", k) for i in range(3) for k in range(4)]
    assert all(0 < r.num_tokens <= 6 for r in records)
    assert len({tuple(r.token_ids) for r in records}) == 12  # seeded per prompt: no prompt repeats another's samples
    ledger = PassRateLedger.load(tmp_path / "offline" / "ledger.json")
    assert set(ledger.stats) == {"q0", "q1", "q2"}
    assert run_rollouts(config)["rollouts"] == 0  # rerun: every prompt already stored


def test_gspo_steps_with_a_colocated_vllm_engine(hd32_checkpoint, tmp_path, monkeypatch):
    config = gspo_config(hd32_checkpoint, tmp_path, engine="vllm", vllm=VLLMSettings(**VLLM), max_steps=2)
    engine_norms = []

    def close_after_reading_the_norm(engine):
        norm = engine.llm.apply_model(lambda m: m.language_model.model.norm.weight.detach().clone())[0]
        engine_norms.append(norm)
        original_close(engine)

    original_close = VLLMEngine.close
    monkeypatch.setattr(VLLMEngine, "close", close_after_reading_the_norm)
    trainer = GSPOTrainer(config)
    trainer.run()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    # Step 1 samples from the checkpoint, step 2 from the weights pushed after step 1's update: in both, the engine's
    # log-probs are the trainer's old log-probs up to the image tokens' share (about 3/704 per token).
    assert all(0.0 <= r["logprob_gap_engine_vs_trainer"] < 0.01 for r in rows)
    # The trainer closed its engine at the end, holding the trained weights (the final norm stands for all of them).
    trained_norm = trainer.model.model.language_model.norm.weight.detach()
    assert not torch.equal(trained_norm, load_policy(hd32_checkpoint)[0].model.language_model.norm.weight)
    (engine_norm,) = engine_norms
    torch.testing.assert_close(engine_norm, trained_norm, atol=0, rtol=0)
