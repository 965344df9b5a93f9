"""What MPO does differently under DeepSpeed ZeRO-3, where each rank holds a partition of every parameter.

ZeRO-3 gathers a module's parameters collectively each time the module is called, and checks that every rank calls
the same modules in the same order. So MPO scores every pair with the same calls: embeddings, vision tower (on a
blank tile, output added × 0, for a pair without images: `embed_in_fixed_order`), projector, decoder, and one
LM-head call (not chunked: `WHOLE_SEQUENCE`). transformers loads the policy already partitioned, so nothing may
run it outside the DeepSpeed engine: the reference pass runs through the prepared engine (as it does under every
setup, train/reference.py), and the final checkpoint is gathered from the partitions.
"""

from __future__ import annotations

import torch

WHOLE_SEQUENCE = 1 << 30  # chunk size: the LM head runs once per pair


def check_zero3_run(config) -> None:
    """Refuse, naming the way out, what MPO cannot do under ZeRO-3."""
    if config.reference != "precomputed" or config.reference_path:
        raise ValueError("under ZeRO-3 the reference is the starting policy, precomputed: drop reference_path / live")
    if config.lora_rank:
        raise ValueError("LoRA under ZeRO-3 is not supported: use ZeRO-2 (recipes/deepspeed/zero2.json) for LoRA")


def gathered_state_dict(accelerator, scorer) -> dict[str, torch.Tensor] | None:
    """The full policy state dict on rank 0 (None elsewhere; every rank must call this), keyed as the policy's."""
    state = accelerator.get_state_dict(scorer)
    return None if state is None else {name.removeprefix("model."): value for name, value in state.items()}
