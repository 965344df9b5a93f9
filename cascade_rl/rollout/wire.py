"""JSON wire format shared by the rollout server and its client: requests, rollouts, sampling, weights."""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, fields

import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams


def image_to_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_from_b64(data: str) -> Image.Image:
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.convert("RGB")


def request_to_json(request: RolloutRequest) -> dict:
    return {
        "prompt_id": request.prompt_id,
        "messages": request.messages,
        "images": [image_to_b64(im) for im in request.images],
        "meta": request.meta,
        "assistant_prefix": request.assistant_prefix,
    }


def request_from_json(data: dict) -> RolloutRequest:
    images = [image_from_b64(im) for im in data.get("images", [])]
    return RolloutRequest(
        data["prompt_id"], data["messages"], images, data.get("meta", {}), data.get("assistant_prefix", "")
    )


def sampling_to_json(sampling: SamplingParams) -> dict:
    return asdict(sampling)


def sampling_from_json(data: dict) -> SamplingParams:
    return SamplingParams(**data)


def rollout_to_json(rollout: Rollout) -> dict:
    """The rollout's fields but `prompt_inputs` (tensors for a trainer in the engine's process, never sent)."""
    return {f.name: getattr(rollout, f.name) for f in fields(rollout) if f.name != "prompt_inputs"}


def rollout_from_json(data: dict) -> Rollout:
    return Rollout(**data)


def weights_to_bytes(model) -> bytes:
    """Trainable parameters as safetensors bytes (frozen ones never change, so they are not sent)."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    return save_safetensors(tensors)


def weights_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors(data)
