"""Cross-checks against the installed TRL where the semantics coincide, on a tiny in-process Qwen3 (no hub).

TRL computes log-probs with its own fused LM head and its own batch layout; we recompute them with a plain
forward + log_softmax and feed our loss functions. Loss values and parameter gradients must agree:
- DPOTrainer loss_type "sigmoid" ↔ dpo_sigmoid_loss, "sft" ↔ lm_loss, "bco_pair" ↔ bco_pair_loss(delta=0);
- GRPOTrainer importance_sampling_level="sequence", loss_type="grpo" ↔ gspo_loss; token-level "grpo", "bnpo",
  "dr_grpo" ↔ grpo_loss with "seq-mean-token-mean", "token-mean", "seq-mean-token-sum" + norm_length.
Where TRL differs: its bco_pair has no running shift δ (TRL ≥ 1.0 removed RunningMoments), so InternVL's MPO
(TRL 0.21 semantics) equals TRL's three-loss recipe only while δ = 0; `test_trl_bco_pair_has_no_delta` pins that.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("trl")
from algos.mpo_step import mpo_step  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer import utils as trl_utils  # noqa: E402

from cascade_rl.algos import (  # noqa: E402
    RunningMean,
    bco_pair_loss,
    dpo_sigmoid_loss,
    grpo_loss,
    gspo_loss,
    lm_loss,
    mpo_loss,
)

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(29)]
BETA = 0.1
TOL = {"rtol": 2e-4, "atol": 2e-6}


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    return Qwen3ForCausalLM(config).float()


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, L-1] log-prob of each next token: our own computation, independent of TRL's fused head."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def grads(loss: torch.Tensor, model) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True))


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, model) -> None:
    torch.testing.assert_close(ours.detach(), theirs.detach(), **TOL)
    for g_ours, g_theirs in zip(grads(ours, model), grads(theirs, model)):
        torch.testing.assert_close(g_ours, g_theirs, **TOL)


# --------------------------------------------------------------------------- DPO


def dpo_trainer(tokenizer, tmp_path, loss_type: list[str], loss_weights: list[float] | None = None):
    policy = tiny_model(0)
    reference = tiny_model(0)
    with torch.no_grad():  # a reference that differs from the policy, so the log-ratios are not all 0
        gen = torch.Generator().manual_seed(1)
        for p in reference.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    data = Dataset.from_dict(
        {
            "prompt": ["w1 w2", "w3", "w4 w5 w6"],
            "chosen": [" w7 w8", " w9", " w10 w11 w12"],
            "rejected": [" w13", " w14 w15 w16", " w17 w18"],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=3, loss_type=loss_type, loss_weights=loss_weights,
        beta=BETA, report_to=[], use_cpu=True, bf16=False, precompute_ref_log_probs=False,
    )  # fmt: skip
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    return trainer, batch


def our_dpo_pieces(trainer, batch):
    """(h_c, h_r, chosen token log-probs, chosen mask) computed by us from TRL's collated batch."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    mask = batch["completion_mask"][:, 1:].bool()  # label positions of completion tokens
    policy = token_logps(trainer.model, ids, attention)
    with torch.no_grad():
        reference = token_logps(trainer.ref_model, ids, attention)
    sums = torch.where(mask, policy, 0).sum(-1)
    ref_sums = torch.where(mask, reference, 0).sum(-1)
    half = ids.shape[0] // 2  # TRL stacks [chosen; rejected]
    return sums[:half], sums[half:], ref_sums[:half], ref_sums[half:], policy[:half], mask[:half]


@pytest.mark.parametrize("loss_type", ["sigmoid", "sft", "bco_pair"])
def test_dpo_trainer_terms_match(tokenizer, tmp_path, loss_type):
    trainer, batch = dpo_trainer(tokenizer, tmp_path, [loss_type])
    theirs = trainer.compute_loss(trainer.model, batch)
    pc, pr, rc, rr, chosen_tokens, chosen_mask = our_dpo_pieces(trainer, batch)
    h_c, h_r = pc - rc, pr - rr
    assert h_c.abs().min() > 1e-3 and h_r.abs().min() > 1e-3  # the comparison is not a trivial 0 = 0
    ours = {
        "sigmoid": lambda: dpo_sigmoid_loss(h_c, h_r, beta=BETA).mean(),
        "sft": lambda: lm_loss(chosen_tokens, chosen_mask),
        "bco_pair": lambda: bco_pair_loss(h_c, h_r, beta=BETA, delta=0.0).mean(),
    }[loss_type]()
    assert_same(ours, theirs, trainer.model)


def test_trl_bco_pair_has_no_delta(tokenizer, tmp_path):
    """InternVL's MPO = TRL 0.21's sigmoid/bco_pair/sft at 0.8/0.2/1.0 with a running δ; current TRL has no δ."""
    assert not hasattr(trl_utils, "RunningMoments")  # TRL 0.21 kept δ in trainer/utils.py RunningMoments
    trainer, batch = dpo_trainer(tokenizer, tmp_path, ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
    theirs = trainer.compute_loss(trainer.model, batch)
    pieces = our_dpo_pieces(trainer, batch)

    ours_no_delta, _ = mpo_loss(*pieces, delta=0.0)
    assert_same(ours_no_delta, theirs, trainer.model)

    ours, metrics = mpo_step(*pieces, running=RunningMean())  # first update: δ = this batch's mean reward
    h_c, h_r = pieces[0] - pieces[2], pieces[1] - pieces[3]
    delta = metrics["delta"]
    torch.testing.assert_close(delta.float(), BETA * torch.cat([h_c, h_r]).mean().detach())
    shift = 0.2 * (bco_pair_loss(h_c, h_r, beta=BETA, delta=delta) - bco_pair_loss(h_c, h_r, beta=BETA, delta=0.0))
    torch.testing.assert_close(ours.detach(), (theirs + shift.mean()).detach(), **TOL)
    assert (ours - theirs).abs() > 1e-4  # δ ≠ 0 here, so the two libraries really differ


# --------------------------------------------------------------------------- GRPO / GSPO

PROMPT_IDS = torch.tensor([[0, 4, 5], [0, 0, 6], [7, 8, 9], [0, 10, 11]])
COMPLETION_IDS = torch.tensor(
    [[12, 13, 14, 1, 0, 0], [15, 16, 17, 18, 19, 1], [20, 1, 0, 0, 0, 0], [21, 22, 23, 1, 0, 0]]
)
COMPLETION_MASK = (torch.arange(6)[None] <= torch.tensor([3, 5, 1, 3])[:, None]).long()
ADVANTAGES = torch.tensor([1.0, -0.5, -1.5, 0.7])


def grpo_trainer(tokenizer, tmp_path, level: str, loss_type: str, eps_low: float, eps_high: float):
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=6,
        importance_sampling_level=level, loss_type=loss_type, epsilon=eps_low, epsilon_high=eps_high, beta=0.0,
        report_to=[], use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=tiny_model(0),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["w1 w2", "w3"]}),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we call the loss directly
    return trainer


def grpo_inputs(trainer, offsets: torch.Tensor, noise: float):
    """TRL's loss inputs plus our [B, T] log-probs; old = ours - per-sequence offset - token noise."""
    prompt_mask = (PROMPT_IDS != 0).long()
    ids = torch.cat([PROMPT_IDS, COMPLETION_IDS], dim=1)
    attention = torch.cat([prompt_mask, COMPLETION_MASK], dim=1)
    logps = token_logps(trainer.model, ids, attention)[:, PROMPT_IDS.shape[1] - 1 :]  # [4, 6]
    gen = torch.Generator().manual_seed(3)
    old = (logps.detach() - offsets[:, None] - noise * torch.randn(logps.shape, generator=gen)) * COMPLETION_MASK
    inputs = {
        "prompt_ids": PROMPT_IDS, "prompt_mask": prompt_mask, "completion_ids": COMPLETION_IDS,
        "completion_mask": COMPLETION_MASK, "advantages": ADVANTAGES, "old_per_token_logps": old,
    }  # fmt: skip
    return inputs, logps, old


def test_grpo_trainer_sequence_level_matches_gspo(tokenizer, tmp_path):
    trainer = grpo_trainer(tokenizer, tmp_path, "sequence", "grpo", 3e-4, 4e-4)
    # Sequence log-ratios ≈ [+2e-3, -1e-4, -2e-3, +1e-4]: two sequences outside [1-3e-4, 1+4e-4], two inside.
    inputs, logps, old = grpo_inputs(trainer, torch.tensor([2e-3, -1e-4, -2e-3, 1e-4]), noise=1e-5)
    theirs = trainer.compute_loss(trainer.model, inputs)
    ours, metrics = gspo_loss(logps, old, ADVANTAGES, COMPLETION_MASK)
    assert 0 < metrics["clip_fraction"] < 1
    assert_same(ours, theirs, trainer.model)
    ours_token, _ = gspo_loss(logps, old, ADVANTAGES, COMPLETION_MASK, variant="token")
    assert_same(ours_token, theirs, trainer.model)


@pytest.mark.parametrize(
    ("loss_type", "aggregation", "norm_length"),
    [("grpo", "seq-mean-token-mean", None), ("bnpo", "token-mean", None), ("dr_grpo", "seq-mean-token-sum", 6)],
)
def test_grpo_trainer_token_level_matches_grpo_loss(tokenizer, tmp_path, loss_type, aggregation, norm_length):
    trainer = grpo_trainer(tokenizer, tmp_path, "token", loss_type, 0.2, 0.28)
    inputs, logps, old = grpo_inputs(trainer, torch.zeros(4), noise=0.3)  # token ratios e^{±0.3}: some clip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trainer.compute_loss(trainer.model, inputs)
    ours, metrics = grpo_loss(
        logps, old, ADVANTAGES, COMPLETION_MASK, clip_low=0.2, clip_high=0.28, aggregation=aggregation,
        norm_length=norm_length,
    )  # fmt: skip
    assert 0 < metrics["clip_fraction"] < 1
    assert_same(ours, theirs, trainer.model)
