"""MPO's reference log-probs, computed exactly as the policy's first forward is, and cached beside the run.

The log-ratio h = lp_θ − lp_0 must be 0 at initialisation (InternVL loads policy and reference alike, in bf16).
So the reference scores a pair on the same device, with parameters of the same dtype and under the same autocast as
the prepared policy: the precomputed reference of the starting policy runs through the prepared policy itself (DDP
module, DeepSpeed engine, accelerate's autocast) before the first optimizer step; a separate reference model (a
`reference_path` checkpoint, or the `live` reference) is placed and run like the policy (`like_policy`,
`ReferenceScorer`). The reference pass is spread over the ranks, each scoring every world-th pair.

The cache is keyed by the reference checkpoint's fingerprint, the pairs, the tokenisation settings and how the pass
ran (`computed_as`), so a rerun reuses it and any change recomputes it. While training, no reference model sits in
memory unless the reference is `live`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cascade_rl.train.pair_data import PairSource


def like_policy(reference: torch.nn.Module, policy: torch.nn.Module, accelerator) -> torch.nn.Module:
    """`reference` on the accelerator's device, each floating parameter and buffer in the dtype of the prepared
    `policy`'s tensor of that name (a DeepSpeed bf16 engine casts the parameters to bf16 and leaves the buffers, such
    as rotary frequencies, as loaded; without DeepSpeed all stay as loaded), frozen, in eval mode. A parameter the
    policy has no tensor of that name for (a LoRA-wrapped policy) takes the policy's first parameter dtype."""
    reference = reference.to(accelerator.device).requires_grad_(False).eval()
    dtypes = {name: t.dtype for name, t in [*policy.named_parameters(), *policy.named_buffers()]}
    default = next(p.dtype for p in policy.parameters() if p.is_floating_point())
    for name, param in reference.named_parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtypes.get(name, default))
    for name, buffer in reference.named_buffers():
        if buffer.is_floating_point() and name in dtypes:
            buffer.data = buffer.data.to(dtypes[name])
    return reference


class ReferenceScorer(torch.nn.Module):
    """A pair scorer (`forward(pairs)` as `stages.mpo.PairScorer`) run under the accelerator's autocast, the context
    `accelerator.prepare` wraps the policy's forward in (bf16 / fp16 mixed precision without DeepSpeed; none
    otherwise); no gradients."""

    def __init__(self, scorer: torch.nn.Module, accelerator):
        super().__init__()
        self.scorer, self.accelerator = scorer, accelerator

    @torch.no_grad()
    def forward(self, pairs):
        with self.accelerator.autocast():
            return self.scorer(pairs)


def computed_as(accelerator, policy: torch.nn.Module) -> str:
    """How the policy's forward runs, for the cache key: device type, parameter dtype, autocast dtype or none."""
    dtype = next(p.dtype for p in policy.parameters() if p.is_floating_point())
    autocast = accelerator.mixed_precision if accelerator.native_amp else "none"
    return f"{accelerator.device.type} {dtype} autocast={autocast}"


@torch.no_grad()
def sharded_sequence_logps(scorer, pairs: PairSource, accelerator) -> torch.Tensor:
    """[N, 2] summed (chosen, rejected) log-probs through `scorer` (the prepared policy or a `ReferenceScorer`):
    rank r scores pairs r, r + world, ...; every rank makes the same number of calls (the last pair repeats to even
    them out, as ZeRO-3 and DDP's buffer broadcast need); results gathered, float32 on the CPU."""
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = -(-len(pairs) // world)
    rows = torch.empty(per_rank, 2)
    was_training = scorer.training
    scorer.eval()
    for k in tqdm(range(per_rank), desc="reference log-probs", unit="pair", disable=not accelerator.is_main_process):
        chosen, rejected, _, _ = scorer([pairs.encode(min(rank + k * world, len(pairs) - 1))])
        rows[k] = torch.stack([chosen[0], rejected[0]]).float().cpu()
    scorer.train(was_training)
    gathered = accelerator.gather(rows.to(accelerator.device)).cpu().view(world, per_rank, 2)
    return gathered.transpose(0, 1).reshape(-1, 2)[: len(pairs)]  # pair i = rank i % world, slot i // world


def read_cache(cache_file: Path, key: dict, n_pairs: int) -> torch.Tensor | None:
    """The cached [N, 2] log-probs when `cache_file` exists and was written for `key` and N pairs, else None."""
    if cache_file.exists():
        cached = torch.load(cache_file, weights_only=True)
        if cached.get("key") == key and cached["logps"].shape == (n_pairs, 2):
            return cached["logps"]
    return None


def write_cache(cache_file: Path, key: dict, logps: torch.Tensor) -> None:
    """Atomically: a temporary file, then a rename."""
    tmp = cache_file.with_suffix(".tmp")
    torch.save({"key": key, "logps": logps}, tmp)
    tmp.replace(cache_file)


def cached_reference_logps(cache: Path, key: dict, make_scorer, pairs: PairSource, accelerator) -> torch.Tensor:
    """The cached [N, 2] reference log-probs when `cache` matches `key`, else scored by every rank through
    `make_scorer()` (called only then, so a reference checkpoint is loaded only when needed) and cached."""
    logps = read_cache(cache, key, len(pairs))
    accelerator.wait_for_everyone()  # every rank has read the cache before rank 0 may rewrite it
    if logps is not None:
        return logps
    logps = sharded_sequence_logps(make_scorer(), pairs, accelerator)
    if accelerator.is_main_process:
        write_cache(cache, key, logps)
    accelerator.wait_for_everyone()
    return logps
