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
    """Token embeddings [1, P, D] with the projected cached `features` scattered onto the image-token positions.
    For ids without image tokens, `features` are a blank tile's (`blank_features`), projected and added × 0: the
    projector is called for every prompt, as a fixed call order (ZeRO-3) needs."""
    embeds = model.get_input_embeddings()(input_ids)
    projected = model.model.multi_modal_projector(features)
    if not bool((input_ids == model.config.image_token_id).any()):
        return embeds + 0 * projected.sum()
    return scatter_image_features(model, input_ids, embeds, projected)


def blank_tile(model, *, dtype: torch.dtype, device) -> torch.Tensor:
    """[1, 3, H, W] zeros at the vision tower's input size: what a row without images runs the tower on when every
    row must make the same module calls."""
    vision = model.config.vision_config
    size = vision.image_size if isinstance(vision.image_size, (list, tuple)) else (vision.image_size,) * 2
    return torch.zeros(1, 3, *size, dtype=dtype, device=device)


def blank_features(model) -> torch.Tensor:
    """`vision_features` of a blank tile: the stand-in cache of a prompt without images (see `embed_with_images`)."""
    return vision_features(model, blank_tile(model, dtype=model.dtype, device="cpu"))


def scatter_image_features(model, input_ids: torch.Tensor, embeds: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """`embeds` [1, P, D] with the projected image features (any shape ending in D) on the image-token positions;
    a count mismatch is an error naming both counts."""
    image = image.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    positions = (input_ids == model.config.image_token_id).unsqueeze(-1)
    if int(positions.sum()) != image.shape[0]:
        raise ValueError(f"{int(positions.sum())} image tokens but {image.shape[0]} image features")
    return embeds.masked_scatter(positions, image)


def embed_in_fixed_order(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings [1, P, D] with the image features in place, computed by the same module calls in the same
    order whether the row has images or not: embeddings, vision tower, projector. A row without images runs the
    tower on one blank tile and adds its output × 0 (values unchanged, the tower in the graph with zero gradient).
    Under ZeRO-3, which gathers parameters per module call and checks that every rank calls the same modules in
    the same order, this keeps ranks in step whatever their rows hold; the decoder is then called on the result."""
    embeds = model.get_input_embeddings()(input_ids)
    if pixel_values is None:
        blank = blank_tile(model, dtype=embeds.dtype, device=embeds.device)
        features = model.get_image_features(pixel_values=blank, return_dict=True).pooler_output
        return embeds + 0 * features.sum()
    features = model.get_image_features(pixel_values=pixel_values.to(embeds.dtype), return_dict=True).pooler_output
    return scatter_image_features(model, input_ids, embeds, features)
