"""Model inputs: requests and encoded rows turned into the tensors the policy takes. Pixel tensors live here.

- `encode_request`: a rollout request's prompt (messages + images) → `PromptInputs` (ids, tiled pixels). HFEngine
  encodes each prompt once with it and hands the result out with the prompt's rollouts; the GSPO groups reuse it.
- `with_vision_cache` / `completion_logps`: a group's prompt with the frozen vision tower's output kept, and its
  completions scored from it (pixels or cached features, whichever it holds).
- `collate_prompts` (generation, left padded) and `collate_chats` (SFT, right padded): a batch of encodings →
  `input_ids`, `attention_mask` [B, T_max], `loss_mask` [B, T_max] (chats) and `pixel_values` [ΣN_tiles, 3, H, W]
  in batch order (the model fills the image tokens in that order), on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from cascade_rl.models.chat import EncodedChat, encode_prompt
from cascade_rl.models.logprobs import CHUNK_SIZE, shared_prompt_logps
from cascade_rl.models.vision_cache import blank_features, vision_features


@dataclass(frozen=True)
class PromptInputs:
    """One prompt as the policy reads it, for generating completions and scoring them.

    input_ids: [P] ending in `<|im_start|>assistant\\n` (or in the request's assistant prefix), image blocks
    expanded; pixel_values: [N_tiles, 3, H, W] or None; vision_cache: the frozen vision tower's output for those
    pixels, [N_tiles, tokens/tile, 4·C_vision], or None — when present, scoring uses it instead of running the tower
    again.
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    vision_cache: torch.Tensor | None = None


def encode_request(processor, request, *, max_tiles: int) -> PromptInputs:
    """A request's (`RolloutRequest`: messages, PIL images, assistant prefix) prompt, tokenised with its images
    tiled; with an assistant prefix the ids end in the prefix's tokens, where generation continues."""
    prompt = encode_prompt(processor, request.chat(), request.images, max_tiles=max_tiles)
    return PromptInputs(prompt.input_ids, prompt.pixel_values)


def with_vision_cache(model, prompt: PromptInputs, *, fixed_call_order: bool = False) -> PromptInputs:
    """`prompt` with the vision tower's output for its pixels computed now, once (`vision_features`); unchanged
    without images. Only for a frozen tower: later scoring applies the (trainable) projector to the kept output.
    fixed_call_order: a prompt without images keeps a blank tile's output instead (`blank_features`), so every
    prompt calls the tower here and the projector when scored (what ZeRO-3 needs; the blank adds × 0)."""
    if prompt.pixel_values is None:
        return replace(prompt, vision_cache=blank_features(model)) if fixed_call_order else prompt
    return replace(prompt, vision_cache=vision_features(model, prompt.pixel_values))


def completion_logps(
    model,
    prompt: PromptInputs,
    completions: list[torch.Tensor],
    *,
    temperature: float,
    pad_id: int,
    chunk_size: int = CHUNK_SIZE,
    fixed_call_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_logps [K, T_max], mask [K, T_max]) of K completions [T_k] of `prompt`, the prompt and its images
    encoded once (`shared_prompt_logps`, chunk_size and fixed_call_order as there); the cached vision output
    replaces the pixels when present."""
    return shared_prompt_logps(
        model,
        prompt.input_ids,
        completions,
        pixel_values=None if prompt.vision_cache is not None else prompt.pixel_values,
        vision_cache=prompt.vision_cache,
        temperature=temperature,
        pad_id=pad_id,
        chunk_size=chunk_size,
        fixed_call_order=fixed_call_order,
    )


def collate_prompts(prompts: list[PromptInputs], pad_id: int, *, device, dtype) -> dict[str, torch.Tensor]:
    """A generation batch: `input_ids`, `attention_mask` [B, P_max] left padded (every prompt ends at the last
    column, where decoding continues); `pixel_values` [ΣN_tiles, 3, H, W] in `dtype` when any prompt has images."""
    ids, attention = _pad([p.input_ids for p in prompts], pad_id, left=True)
    return _on_device({"input_ids": ids, "attention_mask": attention}, prompts, device, dtype)


def collate_chats(chats: list[EncodedChat], pad_id: int, *, device, dtype) -> dict[str, torch.Tensor]:
    """A training batch: `input_ids`, `attention_mask`, `loss_mask` [B, T_max] right padded (padding is never
    trained); `pixel_values` [ΣN_tiles, 3, H, W] in `dtype` when any chat has images."""
    ids, attention = _pad([c.input_ids for c in chats], pad_id, left=False)
    loss_mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, chat in enumerate(chats):
        loss_mask[row, : len(chat.loss_mask)] = chat.loss_mask
    batch = {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}
    return _on_device(batch, chats, device, dtype)


def _pad(sequences: list[torch.Tensor], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into [B, T_max] ids (pad_id in the padding) and the [B, T_max] long attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask


def _on_device(batch: dict[str, torch.Tensor], encoded: list, device, dtype) -> dict[str, torch.Tensor]:
    """`batch` moved to `device`, plus the encodings' pixels concatenated in order and cast to `dtype`."""
    batch = {key: value.to(device) for key, value in batch.items()}
    pixels = [e.pixel_values for e in encoded if e.pixel_values is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels).to(device, dtype)
    return batch
