"""Supervised next-token loss of the SFT stage, from the model's logits (the model call stays in the stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cascade_rl.algos.checks import as_bool_mask, check_shape, upcast


def summed_next_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the trained tokens, summed (not averaged), with position t predicting token t+1.

    NLL = Σ_{b, t ≥ 1 : loss_mask[b,t]} −log softmax(logits[b, t−1])[input_ids[b, t]]
    The SFT stage divides this by the trained-token count of the whole optimizer step (all micro-batches, all
    ranks), so batch 1 × accumulation 8 trains like batch 8 × accumulation 1.
    Source: causal-LM cross-entropy as transformers' `ForCausalLMLoss` (shift by one), restricted to assistant
    tokens as InternVL's chat fine-tuning does. Departures: the mask decides, not an ignore index; no
    finiteness check (it would cost a pass over the [B, T, V] logits); a NaN shows up as a NaN loss.

    Args:
        logits: [B, T, V] the model's output on `input_ids` (any float dtype; computed in at least float32).
        input_ids: [B, T] token ids.
        loss_mask: [B, T] 1 on tokens to train as targets; position 0 is never a target.
    Returns:
        nll [] with gradient, and metrics {"correct_tokens": [] number of trained tokens whose argmax prediction
        is the target (detached)}.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be a [B, T, V] tensor, got shape {tuple(getattr(logits, 'shape', ()))}")
    check_shape("input_ids", input_ids, logits.shape[:2], "[B, T] like logits[..., 0]")
    loss_mask = as_bool_mask(loss_mask, name="loss_mask")
    check_shape("loss_mask", loss_mask, logits.shape[:2], "[B, T] like logits[..., 0]")
    predictions = upcast(logits[:, :-1])  # [B, T-1, V]: position t predicts token t+1
    targets, keep = input_ids[:, 1:], loss_mask[:, 1:]
    kept_logits, kept_targets = predictions[keep], targets[keep]  # [N, V], [N]
    nll = F.cross_entropy(kept_logits, kept_targets, reduction="sum")
    correct = (kept_logits.argmax(-1) == kept_targets).sum()
    return nll, {"correct_tokens": correct.detach()}
