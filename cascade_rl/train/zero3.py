"""What the trainers do differently under DeepSpeed ZeRO-3, where each rank holds a partition of every parameter.

ZeRO-3 gathers a module's parameters collectively each time the module is called, and checks that every rank calls
the same modules in the same order. So every scoring call makes the same module calls whatever its row holds
(`fixed_call_order`): embeddings, vision tower (on a blank tile, output added × 0, for a row without images:
`embed_in_fixed_order`) or its cached output, projector, decoder, and one LM-head call (not chunked:
`WHOLE_SEQUENCE`). transformers loads the policy already partitioned, so nothing may run it outside the DeepSpeed
engine, and the final checkpoint is gathered from the partitions (`gathered_state_dict`).
- MPO: the reference pass runs through the prepared engine, each rank scoring every world-th pair.
- GSPO: the frozen-vision cache, the old log-probs and the updates run through the engine, every rank over the same
  number of groups; an HF engine samples from its own whole copy (`unpartitioned_policy`), into which the trained
  weights are gathered a bucket at a time (models/gathered.py), as they are for a colocated vLLM engine.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cascade_rl.models import load_policy
from cascade_rl.train.pair_data import PairSource
from cascade_rl.train.reference import read_cache, write_cache

WHOLE_SEQUENCE = 1 << 30  # chunk size: the LM head runs once per pair


def check_zero3_gspo(config) -> None:
    """Refuse, naming the way out, what GSPO cannot do under ZeRO-3."""
    if config.kl_coef > 0:
        raise ValueError(
            "kl_coef > 0 under ZeRO-3 is not supported: the KL reference would be a whole model on every rank; set "
            "kl_coef=0 (InternVL3.5's online recipe) or train under ZeRO-2 (recipes/deepspeed/accelerate_zero2.yaml)"
        )
    if config.engine in ("server", "hf-server"):
        raise ValueError(
            f"engine={config.engine} under ZeRO-3 is not supported: a rollout server takes the weights whole from one "
            "trainer process; use engine=hf or vllm (one engine per rank, weights gathered bucket by bucket), or "
            "train under ZeRO-2 (recipes/deepspeed/accelerate_zero2.yaml) on one process"
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


def check_zero3_run(config) -> None:
    """Refuse, naming the way out, what MPO cannot do under ZeRO-3."""
    if config.reference != "precomputed" or config.reference_path:
        raise ValueError("under ZeRO-3 the reference is the starting policy, precomputed: drop reference_path / live")
    if config.lora_rank:
        raise ValueError("LoRA under ZeRO-3 is not supported: use ZeRO-2 (recipes/deepspeed/zero2.json) for LoRA")


@torch.no_grad()
def sharded_sequence_logps(scorer, pairs: PairSource, accelerator) -> torch.Tensor:
    """[N, 2] summed (chosen, rejected) log-probs through the prepared `scorer`: rank r scores pairs r, r + world,
    ...; every rank makes the same number of calls (the last pair repeats to even them out); results gathered."""
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = -(-len(pairs) // world)
    rows = torch.empty(per_rank, 2)
    scorer.eval()
    for k in tqdm(range(per_rank), desc="reference log-probs", unit="pair", disable=not accelerator.is_main_process):
        chosen, rejected, _, _ = scorer([pairs.encode(min(rank + k * world, len(pairs) - 1))])
        rows[k] = torch.stack([chosen[0], rejected[0]]).float().cpu()
    scorer.train()
    gathered = accelerator.gather(rows.to(accelerator.device)).cpu().view(world, per_rank, 2)
    return gathered.transpose(0, 1).reshape(-1, 2)[: len(pairs)]  # pair i = rank i % world, slot i // world


def gathered_state_dict(accelerator, scorer) -> dict[str, torch.Tensor] | None:
    """The full policy state dict on rank 0 (None elsewhere; every rank must call this), keyed as the policy's."""
    state = accelerator.get_state_dict(scorer)
    return None if state is None else {name.removeprefix("model."): value for name, value in state.items()}


def reference_from_cache_or_engine(cache: Path, key: dict, scorer, pairs: PairSource, accelerator) -> torch.Tensor:
    """The cached [N, 2] reference log-probs when `cache` matches `key`, else computed by all ranks and cached."""
    logps = read_cache(cache, key, len(pairs))
    accelerator.wait_for_everyone()  # every rank has read the cache before rank 0 may rewrite it
    if logps is not None:
        return logps
    logps = sharded_sequence_logps(scorer, pairs, accelerator)
    if accelerator.is_main_process:
        write_cache(cache, key, logps)
    accelerator.wait_for_everyone()
    return logps
