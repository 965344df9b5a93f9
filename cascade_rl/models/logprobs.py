"""Per-token log-probs of completions, with the shared prompt (and its images) encoded once.

A preference pair's chosen and rejected completions, or a GSPO group's G rollouts, share one prompt and its
images. `shared_prompt_logps` runs the vision tower and the prompt once, keeps the prompt's keys and values,
repeats them for the K completions, and scores all K completions in one batched forward. Gradients flow through
the shared prompt states to the vision tower, projector and LLM exactly as with K full forwards, at the cost of
one prompt instead of K: for image-dominated prompts that is most of the work.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from cascade_rl.models.vision_cache import embed_with_images


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) at `targets`: logits [..., V], targets [...] → [...] (float32)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def pad_right(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, T_max] right-padded ids and the [K, T_max] bool mask of real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return ids, mask


def shared_prompt_logps(
    model,
    prompt_ids: torch.Tensor,
    completions: list[torch.Tensor],
    *,
    pixel_values: torch.Tensor | None = None,
    vision_cache: torch.Tensor | None = None,
    temperature: float = 1.0,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score K completions of one prompt, encoding the prompt once.

    prompt_ids: [P]; completions: K tensors [T_k] (T_k ≥ 1); pixel_values: [N_tiles, 3, H, W] or None;
    vision_cache: the frozen vision tower's output for those pixels (vision_cache.vision_features), used instead.
    Returns (token_logps [K, T_max], mask [K, T_max] bool): log π(y_k,t | prompt, y_k,<t) / temperature-scaled,
    zero where masked. Right padding needs no attention mask: a real token never attends to a later position.
    """
    device = next(model.parameters()).device
    cache = DynamicCache()
    inputs = {"input_ids": prompt_ids[None].to(device), "past_key_values": cache, "use_cache": True}
    if vision_cache is not None:
        inputs["inputs_embeds"] = embed_with_images(model, inputs.pop("input_ids"), vision_cache.to(device))
    elif pixel_values is not None:
        inputs["pixel_values"] = pixel_values.to(device, model.dtype)
    first_logits = model(**inputs, logits_to_keep=1).logits[:, -1]  # [1, V]: predicts each completion's token 0
    ids, mask = pad_right(completions, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    cache.batch_repeat_interleave(len(completions))
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits  # [K, T_max, V]
    logits = torch.cat([first_logits.expand(len(completions), -1)[:, None], logits[:, :-1]], dim=1)
    return token_logps(logits, ids, temperature) * mask, mask


def full_sequence_logps(
    model,
    prompt_ids: torch.Tensor,
    completion: torch.Tensor,
    *,
    pixel_values: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Reference path: one full forward over prompt + completion; returns [T] completion token log-probs."""
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, completion])[None].to(device)
    inputs = {"input_ids": ids}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values.to(device, model.dtype)
    logits = model(**inputs).logits[0, len(prompt_ids) - 1 : -1]
    return token_logps(logits, completion.to(device), temperature)
