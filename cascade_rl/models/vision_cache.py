"""Frozen-vision fast path: run the vision tower once per prompt, reuse its output for every rollout and epoch.

InternVL's released online recipe freezes the vision tower but trains the projector and the LLM (SPEC §3). So we
cache the vision tower's output after pixel shuffle — the projector's input, [N_tiles, tokens/tile, 4·C] — and apply
the (trainable) projector on each use. Log-probs and gradients equal the plain path's.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projector input for `pixel_values` [N_tiles, 3, H, W] → [N_tiles, tokens_per_tile, 4·C_vision]."""
    inner = model.model
    captured = {}
    hook = inner.multi_modal_projector.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    try:
        device = next(model.parameters()).device
        inner.get_image_features(pixel_values=pixel_values.to(device, model.dtype))
    finally:
        hook.remove()
    return captured["x"].detach()


def embed_with_images(model, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Token embeddings [1, P, D] with the projected cached `features` scattered onto the image-token positions."""
    embeds = model.get_input_embeddings()(input_ids)
    image = model.model.multi_modal_projector(features).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    positions = (input_ids == model.config.image_token_id).unsqueeze(-1)
    if int(positions.sum()) != image.numel() // embeds.shape[-1]:
        raise ValueError(f"{int(positions.sum())} image tokens but {image.shape[0]} cached image features")
    return embeds.masked_scatter(positions, image)
