"""The MPO reference scores pairs exactly as the policy's first forward does (device, dtype, autocast), so the
log-ratio h = lp_θ − lp_0 is 0 at step 0 under bf16 mixed precision, for a precomputed and a live reference."""

import math

import pytest
import torch
from stages.conftest import build

from cascade_rl.models import load_policy, tokenizer_of
from cascade_rl.stages import mpo as mpo_module
from cascade_rl.stages.mpo import MPOConfig, PairScorer, run_mpo
from cascade_rl.train.metrics import read_metrics
from cascade_rl.train.pair_data import load_pairs
from cascade_rl.train.setup import global_order

N_PAIRS = 6  # the pairs_file fixture


def bf16_config(checkpoint, pairs_file, out, **kw):
    path, images = pairs_file
    base = dict(
        model_path=str(checkpoint),
        pairs=str(path),
        image_root=str(images),
        out_dir=str(out),
        max_tiles=4,
        # every pair in the one micro-batch of step 1, scored under bf16 autocast (accelerate's, on the CPU here)
        optim={
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "per_device_batch": N_PAIRS,
            "max_steps": 1,
            "mixed_precision": "bf16",
        },
    )
    return build(MPOConfig, base, **kw)


def record_loss_inputs(monkeypatch) -> list[tuple[torch.Tensor, ...]]:
    """(policy chosen, policy rejected, reference chosen, reference rejected) [B] of each `mpo_loss` call."""
    calls, original = [], mpo_module.mpo_loss

    def recording(chosen, rejected, ref_chosen, ref_rejected, *args, **kwargs):
        calls.append(tuple(t.detach().clone() for t in (chosen, rejected, ref_chosen, ref_rejected)))
        return original(chosen, rejected, ref_chosen, ref_rejected, *args, **kwargs)

    monkeypatch.setattr(mpo_module, "mpo_loss", recording)
    return calls


def unprepared_fp32_logps(checkpoint, pairs_file) -> torch.Tensor:
    """[N, 2] (chosen, rejected) sums from the fp32 model with no autocast, in step 1's pair order: what the
    reference was before it ran like the policy."""
    path, images = pairs_file
    model, processor = load_policy(checkpoint)
    pairs, _ = load_pairs(path, processor, image_root=str(images), max_tiles=4, max_length=16384, on_overlong="raise")
    scorer = PairScorer(model.eval(), tokenizer_of(processor).pad_token_id or 0)
    with torch.no_grad():
        chosen, rejected, _, _ = scorer([pairs.encode(i) for i in global_order(N_PAIRS, 1, seed=0)])
    return torch.stack([chosen, rejected], dim=1)


@pytest.mark.parametrize("reference", ["precomputed", "live"])
def test_h_is_exactly_zero_at_step_0_under_bf16(tiny_checkpoint, pairs_file, tmp_path, monkeypatch, reference):
    calls = record_loss_inputs(monkeypatch)
    run_mpo(bf16_config(tiny_checkpoint, pairs_file, tmp_path / "run", reference=reference))
    chosen, rejected, ref_chosen, ref_rejected = calls[0]
    # Exactly, bit for bit: the reference runs the same bf16 autocast kernels on the same weights, pair by pair, as
    # the policy's first forward, so h_c = h_r = 0 and not merely within bf16's resolution.
    assert torch.equal(chosen, ref_chosen) and torch.equal(rejected, ref_rejected)
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    # β·h averaged over the batch is 0.0 exactly; DPO = −log σ(0) = ln 2; BCO = 2·(−log σ(0)) = 2 ln 2 with δ = 0
    assert first["chosen_reward"] == 0.0 and first["rejected_reward"] == 0.0 and first["delta"] == 0.0
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["bco_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    # The fp32 model without autocast scores the same pairs differently (here |h| up to ~0.004 nats), so a reference
    # computed that way would have given h ≠ 0 from step 0.
    fp32 = unprepared_fp32_logps(tiny_checkpoint, pairs_file)
    h_if_fp32 = torch.stack([chosen, rejected], dim=1) - fp32
    assert h_if_fp32.abs().max() > 1e-3, h_if_fp32


def test_cached_reference_is_recomputed_when_the_precision_changes(tiny_checkpoint, pairs_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_mpo(bf16_config(tiny_checkpoint, pairs_file, out, optim={"mixed_precision": "no"}))
    fp32_cache = torch.load(next(out.glob("reference_logps-*.pt")), weights_only=True)
    calls = record_loss_inputs(monkeypatch)
    run_mpo(bf16_config(tiny_checkpoint, pairs_file, out))  # same out_dir, same pairs: only the precision differs
    bf16_cache = torch.load(next(out.glob("reference_logps-*.pt")), weights_only=True)
    assert fp32_cache["key"]["computed_as"] == "cpu torch.float32 autocast=none"
    assert bf16_cache["key"]["computed_as"] == "cpu torch.float32 autocast=bf16"
    assert not torch.equal(fp32_cache["logps"], bf16_cache["logps"])
    chosen, _, ref_chosen, _ = calls[0]
    assert torch.equal(chosen, ref_chosen)


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero,reference", [(2, "precomputed"), (2, "live"), (3, "precomputed")], ids=["zero2", "zero2-live", "zero3"]
)
def test_h_is_exactly_zero_at_step_0_under_deepspeed_bf16(tiny_checkpoint, pairs_file, tmp_path, zero, reference):
    pytest.importorskip("deepspeed")
    from stages.conftest import multi_rank_mpo_settings
    from stages.ddp_worker import deepspeed_env, launch, mpo_rank_main
    from stages.test_deepspeed import RECIPES, free_port

    # DeepSpeed's engine casts the policy's parameters to bf16 (no autocast); the reference must score in them too
    settings = multi_rank_mpo_settings(
        tiny_checkpoint, pairs_file, optim={"max_steps": 1, "per_device_batch": 1, "mixed_precision": "bf16"}
    )
    out = tmp_path / "run"
    config = build(MPOConfig, settings, out_dir=str(out), reference=reference)
    launch(mpo_rank_main, (2, free_port(), config, deepspeed_env(RECIPES / f"zero{zero}.json")))
    first = read_metrics(out / "metrics.jsonl")[0]
    # rank 0's micro-batch is one pair, so these are its β·h_c and β·h_r: 0.0 exactly
    assert (first["chosen_reward"], first["rejected_reward"], first["delta"]) == (0.0, 0.0, 0.0)
    if reference == "precomputed":
        cache = torch.load(next(out.glob("reference_logps-*.pt")), weights_only=True)
        assert cache["key"]["computed_as"] == "cpu torch.bfloat16 autocast=none"
