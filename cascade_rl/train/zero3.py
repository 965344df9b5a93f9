"""What the trainers do differently under DeepSpeed ZeRO-3, where each rank holds a partition of every parameter.

ZeRO-3 gathers a module's parameters collectively each time the module is called, and checks that every rank calls
the same modules in the same order. So every scoring call makes the same module calls whatever its row holds
(`fixed_call_order`): embeddings, vision tower (on a blank tile, output added × 0, for a row without images:
`embed_in_fixed_order`) or its cached output, projector, decoder, and one LM-head call (not chunked:
`WHOLE_SEQUENCE`). transformers loads the policy already partitioned, so nothing may run it outside the DeepSpeed
engine, and the final checkpoint is gathered from the partitions (`gathered_state_dict`).
- MPO: the reference pass runs through the prepared engine (as under every setup, train/reference.py), each rank
  scoring every world-th pair.
- GSPO: the frozen-vision cache, the old log-probs, the updates and the KL reference (an engine of its own,
  `partitioned_reference`) run through DeepSpeed engines, every rank over the same
  number of groups; an HF engine samples from its own whole copy (`unpartitioned_policy`), into which the trained
  weights are gathered a bucket at a time (models/gathered.py), as they are for a colocated vLLM engine and for the
  push to vLLM rollout servers (every rank gathers, rank 0 sends: rollout/vllm_server.py).
"""

from __future__ import annotations

import torch

from cascade_rl.models import load_policy

WHOLE_SEQUENCE = 1 << 30  # chunk size: the LM head runs once per pair


def check_zero3_gspo(config) -> None:
    """Refuse, naming the way out, what GSPO cannot do under ZeRO-3."""
    if config.engine == "hf-server":
        raise ValueError(
            "engine=hf-server under ZeRO-3 is not supported: the HF test-double server takes the weights whole from "
            "one trainer process; use engine=server (vLLM servers, weights gathered bucket by bucket and pushed by "
            "rank 0) or engine=hf / vllm (one engine per rank)"
        )


def unpartitioned_policy(accelerator, path) -> torch.nn.Module:
    """A whole copy of the policy at `path` on this rank, loaded outside ZeRO-3's partitioning (in the training
    precision, on this rank's device, eval mode, no gradients): what an HF engine samples from under ZeRO-3.
    transformers partitions what it loads while accelerate's DeepSpeed config is registered with it; the
    registration is lifted for this load (accelerate's `zero3_init_context_manager(enable=False)` re-registers the
    same config, so it does not help)."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    unset_hf_deepspeed_config()
    try:
        model, _ = load_policy(path, dtype=dtype, device=str(accelerator.device))
    finally:
        set_hf_deepspeed_config(accelerator.state.deepspeed_plugin.dschf)
    return model.eval().requires_grad_(False)


def partitioned_reference(accelerator, path) -> torch.nn.Module:
    """GSPO's frozen KL reference under ZeRO-3: the checkpoint at `path` loaded partitioned, as the policy is, in a
    DeepSpeed engine of its own without optimizer (the policy's DeepSpeed config, so the same precision), called like
    the policy (`PolicyCall`): each call gathers its modules, and no rank holds the reference whole."""
    import copy

    import deepspeed

    from cascade_rl.train.ranks import PolicyCall

    model, _ = load_policy(path)  # partitioned as it loads: accelerate's DeepSpeed config is registered
    model.eval().requires_grad_(False)
    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=PolicyCall(model), config=config)
    engine.eval()  # DeepSpeed's eval() returns None
    return engine


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
