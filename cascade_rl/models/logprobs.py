"""Per-token log-probs of completions, with the shared prompt (and its images) encoded once.

A preference pair's chosen and rejected completions, or a GSPO group's G rollouts, share one prompt and its
images. `shared_prompt_logps` runs the vision tower and the prompt once, keeps the prompt's keys and values,
repeats them for the K completions, and scores all K completions in one batched forward. Gradients flow through
the shared prompt states to the vision tower, projector and LLM exactly as with K full forwards, at the cost of
one prompt instead of K: for image-dominated prompts that is most of the work.

The completion pass never holds `[K, T, V]` logits: it takes the decoder's hidden states `[K, T, D]` and applies
the LM head `chunk_size` positions at a time under activation checkpointing, so only one chunk's logits are alive
at a time, in forward and in backward (which recomputes them; its peak is ~3 fp32 `[K, chunk_size, V]` tensors).
At a 151k vocabulary, K=16 and T=2k, one fp32 copy of the whole logits is ~20 GB; one chunk of 512 is ~5 GB.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from cascade_rl.models.vision_cache import embed_in_fixed_order, embed_with_images

CHUNK_SIZE = 512


def token_logps(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature) at `targets`: logits [..., V], targets [...] → [...] (float32)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _head_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float):
    return token_logps(lm_head(hidden), targets, temperature)


def chunked_head_logps(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """token_logps(lm_head(hidden), targets) for hidden [K, T, D], targets [K, T] → [K, T] float32.

    Works on `chunk_size` positions (× all K rows) at a time; with grad enabled each chunk runs under
    non-reentrant checkpointing, so backward recomputes that chunk's [K, chunk_size, V] logits instead of
    autograd keeping them (and their fp32 log_softmax) for the whole sequence.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    pieces = []
    for start in range(0, hidden.shape[1], chunk_size):
        h, y = hidden[:, start : start + chunk_size], targets[:, start : start + chunk_size]
        if torch.is_grad_enabled():
            pieces.append(checkpoint(_head_logps, lm_head, h, y, temperature, use_reentrant=False))
        else:
            pieces.append(_head_logps(lm_head, h, y, temperature))
    return torch.cat(pieces, dim=1)


def pad_right(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, T_max] right-padded ids and the [K, T_max] bool mask of real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return ids, mask


def _prompt_inputs(model, prompt_ids, pixel_values, vision_cache, device, fixed_call_order: bool) -> dict:
    """Keyword arguments of the prompt forward: ids [1, P], or embeddings with cached image features; pixels.
    fixed_call_order: embeddings computed by `embed_in_fixed_order` when no cache is given."""
    inputs = {"input_ids": prompt_ids[None].to(device)}
    if vision_cache is not None:
        inputs["inputs_embeds"] = embed_with_images(model, inputs.pop("input_ids"), vision_cache.to(device))
    elif fixed_call_order:
        pixels = pixel_values.to(device, model.dtype) if pixel_values is not None else None
        inputs["inputs_embeds"] = embed_in_fixed_order(model, inputs.pop("input_ids"), pixels)
    elif pixel_values is not None:
        inputs["pixel_values"] = pixel_values.to(device, model.dtype)
    return inputs


def shared_prompt_logps(
    model,
    prompt_ids: torch.Tensor,
    completions: list[torch.Tensor],
    *,
    pixel_values: torch.Tensor | None = None,
    vision_cache: torch.Tensor | None = None,
    temperature: float = 1.0,
    pad_id: int = 0,
    chunk_size: int = CHUNK_SIZE,
    fixed_call_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score K completions of one prompt, encoding the prompt once.

    prompt_ids: [P]; completions: K tensors [T_k] (T_k ≥ 1); pixel_values: [N_tiles, 3, H, W] or None;
    vision_cache: the frozen vision tower's output for those pixels (vision_cache.vision_features), used instead;
    chunk_size: completion positions whose [K, chunk_size, V] logits exist at once (see `chunked_head_logps`).
    Returns (token_logps [K, T_max], mask [K, T_max] bool): log π(y_k,t | prompt, y_k,<t) / temperature-scaled,
    zero where masked. Right padding needs no attention mask: a real token never attends to a later position.
    Works for InternVL and plain causal LMs (and peft wrappers): the completion pass calls `get_decoder()`, the
    text decoder, and `get_output_embeddings()`, the LM head.
    fixed_call_order: the same module calls whatever the prompt and completions hold (ZeRO-3): the prompt's images
    through `embed_in_fixed_order` (or the cache through the projector), and the completion pass even when every
    completion is one token long; pair it with a chunk_size above any length, so the LM head runs once.
    """
    device = next(model.parameters()).device
    cache = DynamicCache()
    inputs = _prompt_inputs(model, prompt_ids, pixel_values, vision_cache, device, fixed_call_order)
    first_logits = model(**inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # [1, V]
    ids, mask = pad_right(completions, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    first = token_logps(first_logits.expand(len(completions), -1), ids[:, 0], temperature)[:, None]  # [K, 1]
    if ids.shape[1] == 1 and not fixed_call_order:
        return first * mask, mask
    cache.batch_repeat_interleave(len(completions))
    # The last token predicts nothing we score and no scored token attends to it: feed ids[:, :-1] only. In a fixed
    # call order all of ids go through decoder and head (so both run even for one-token completions), and the last
    # position's score, against a pad target, is dropped.
    fed, targets = ids[:, :-1], ids[:, 1:]
    if fixed_call_order:
        fed, targets = ids, torch.cat([targets, torch.full_like(ids[:, :1], pad_id)], dim=1)
    hidden = model.get_decoder()(input_ids=fed, past_key_values=cache, use_cache=True).last_hidden_state
    rest = chunked_head_logps(
        model.get_output_embeddings(), hidden, targets, temperature=temperature, chunk_size=chunk_size
    )
    return torch.cat([first, rest[:, : ids.shape[1] - 1]], dim=1) * mask, mask


def packed_layout(prompt_len: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Layout of one packed row: the prompt, then each completion but its last token, side by side.

    prompt_len: P; lengths: T_k ≥ 1 per completion. The row has L = P + Σ (T_k − 1) positions.
    Returns (allowed [L, L] bool: query i may attend key j — the causal prompt, and each completion's own earlier
    tokens plus the whole prompt, never another completion; position_ids [L]: completion k restarts at P, so its
    rotary positions equal those of a plain prompt + completion row; reads: K tensors [T_k] of the positions
    whose next-token distribution scores completion k's tokens — P − 1, then its own fed tokens).
    """
    segment = [torch.full((prompt_len,), -1)]
    positions = [torch.arange(prompt_len)]
    reads, start = [], prompt_len
    for k, length in enumerate(lengths):
        segment.append(torch.full((length - 1,), k))
        positions.append(torch.arange(prompt_len, prompt_len + length - 1))
        reads.append(torch.cat([torch.tensor([prompt_len - 1]), torch.arange(start, start + length - 1)]))
        start += length - 1
    segment, position_ids = torch.cat(segment), torch.cat(positions)
    index = torch.arange(len(segment))
    causal = index[None, :] <= index[:, None]
    visible = (segment[None, :] == -1) | (segment[None, :] == segment[:, None])
    return causal & visible, position_ids, reads


def _backbone(model):
    """The module that maps ids (+ pixels) to the decoder's last hidden state: InternVLModel, or a causal LM's
    decoder; through a peft wrapper too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def packed_logps(
    model,
    prompt_ids: torch.Tensor,
    completions: list[torch.Tensor],
    *,
    pixel_values: torch.Tensor | None = None,
    vision_cache: torch.Tensor | None = None,
    temperature: float = 1.0,
    pad_id: int = 0,
    chunk_size: int = CHUNK_SIZE,
    fixed_call_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score K completions of one prompt in one forward over one packed row (see `packed_layout`).

    Same arguments and result as `shared_prompt_logps`: (token_logps [K, T_max], mask [K, T_max]). The prompt and
    its images are encoded once, as there, but without a key/value cache: one model call over
    P + Σ (T_k − 1) tokens under a block attention mask, so no prompt keys/values are copied per completion and
    the whole pair is one call. Suits few completions (a preference pair); the dense [L, L] mask grows with Σ T_k.
    Needs an attention implementation that takes a 4-D mask (sdpa or eager, not flash-attention).
    fixed_call_order: embeddings, vision tower (on a blank tile for a row without images), projector, decoder,
    in that order for every row (`embed_in_fixed_order`; what ZeRO-3 needs).
    """
    impl = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if impl.startswith("flash"):
        raise ValueError(f"packed_logps needs a 4-D attention mask, which {impl} does not take; load with sdpa")
    device = next(model.parameters()).device
    allowed, position_ids, reads = packed_layout(len(prompt_ids), [len(c) for c in completions])
    ids = torch.cat([prompt_ids] + [c[:-1] for c in completions])[None].to(device)
    mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill_(~allowed, torch.finfo(model.dtype).min)
    inputs = {"attention_mask": mask[None, None].to(device), "position_ids": position_ids[None].to(device)}
    pixels = pixel_values.to(device, model.dtype) if pixel_values is not None else None
    if vision_cache is not None:
        inputs["inputs_embeds"] = embed_with_images(model, ids, vision_cache.to(device))
    elif fixed_call_order:
        inputs["inputs_embeds"] = embed_in_fixed_order(model, ids, pixels)
    elif pixels is not None:
        inputs.update(input_ids=ids, pixel_values=pixels)
    else:
        inputs["input_ids"] = ids
    hidden = _backbone(model)(**inputs, use_cache=False).last_hidden_state[0]  # [L, D]
    read_ids, _ = pad_right(reads, 0)
    targets, target_mask = pad_right(completions, pad_id)
    rows = hidden[read_ids.to(device)]  # [K, T_max, D]
    logps = chunked_head_logps(
        model.get_output_embeddings(), rows, targets.to(device), temperature=temperature, chunk_size=chunk_size
    )
    target_mask = target_mask.to(device)
    return logps * target_mask, target_mask


def full_sequence_logps(
    model,
    prompt_ids: torch.Tensor,
    completion: torch.Tensor,
    *,
    pixel_values: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Reference path (tests): one plain full forward over prompt + completion; returns [T] completion token
    log-probs. Deliberately unchunked, so it checks the chunked path independently; `logits_to_keep` limits the
    logits to the T + 1 last positions, [T + 1, V], rather than the whole (image-heavy) prompt."""
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids, completion])[None].to(device)
    inputs = {"input_ids": ids}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values.to(device, model.dtype)
    logits = model(**inputs, logits_to_keep=len(completion) + 1).logits[0, :-1]
    return token_logps(logits, completion.to(device), temperature)
