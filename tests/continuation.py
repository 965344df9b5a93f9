"""The reference the engines' assistant-prefix tests compare with, computed without the engines: the plain generation
prompt's ids followed by the prefix's own tokens, decoded greedily by full forwards of the HF model."""

import torch

from cascade_rl.models import encode_prompt


def prefixed_prompt(processor, request, *, max_tiles: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids [P + L], pixel_values): `request.messages` encoded for generation, then its assistant prefix's L tokens."""
    prompt = encode_prompt(processor, request.messages, request.images, max_tiles=max_tiles)
    prefix = processor.tokenizer(request.assistant_prefix, add_special_tokens=False)["input_ids"]
    return torch.cat([prompt.input_ids, torch.tensor(prefix)]), prompt.pixel_values


def greedy_reference(
    model, ids: torch.Tensor, pixel_values, *, suppressed: list[int], eos_id: int, steps: int
) -> list[int]:
    """Greedy decoding of up to `steps` tokens after `ids` [P], one full forward (no cache) per token; `suppressed`
    (image) tokens are never chosen; stops after `eos_id` (end of turn)."""
    out = []
    for _ in range(steps):
        inputs = {"input_ids": ids[None]}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float()
        logits[suppressed] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        if token == eos_id:
            break
        ids = torch.cat([ids, torch.tensor([token])])
    return out
