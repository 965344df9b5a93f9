"""The stages with engine=vllm on the tiny InternVL (head_dim 32), as a user runs them: the offline rollout stage
(vLLM reads the checkpoint itself) and GSPO steps whose rollouts come from a colocated engine that takes the
trainer's weights after every optimizer step."""

from pathlib import Path

import pytest
import torch
from stages.conftest import gspo_config, write_prompts

from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.models import load_policy
from cascade_rl.rollout.vllm import VLLMEngine
from cascade_rl.rollout.vllm_support import VLLMSettings
from cascade_rl.stages.gspo import GSPOTrainer
from cascade_rl.stages.rollout import RolloutStageConfig, run_rollouts
from cascade_rl.train.metrics import read_metrics

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
    config = gspo_config(hd32_checkpoint, tmp_path, engine="vllm", vllm=VLLMSettings(**VLLM), optim={"max_steps": 2})
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


@pytest.mark.parametrize("zero3", [False, True], ids=["ddp", "zero3"])
def test_gspo_on_two_ranks_with_an_engine_each_matches_one_process(hd32_checkpoint, tmp_path, zero3):
    """Two gloo ranks, each with its own colocated vLLM engine (external_launcher executor), sample their half of a
    step's prompts; seeds are per prompt, so the run equals one process with one engine over the same prompts. Under
    DeepSpeed ZeRO-3 each engine takes the weights gathered from the partitions, bucket by bucket."""
    from rank_runs import assert_two_ranks_equal_one
    from stages.ddp_worker import deepspeed_env, gspo_rank_main, launch
    from stages.test_gspo_ddp import free_port

    if zero3:
        pytest.importorskip("deepspeed")
    zero3_config = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed" / "zero3.json"
    env = deepspeed_env(zero3_config) if zero3 else None

    settings = dict(
        engine="vllm", vllm=VLLMSettings(**VLLM), optim={"max_steps": 2}, prompts_per_step=4, mini_batch_prompts=4
    )
    one = gspo_config(hd32_checkpoint, tmp_path / "one", **settings)
    two = gspo_config(hd32_checkpoint, tmp_path / "two", **settings)
    GSPOTrainer(one).run()
    launch(gspo_rank_main, (2, free_port(), two, env), timeout_s=600)
    assert_two_ranks_equal_one(tmp_path / "one/run", tmp_path / "two/run")
