"""HFEngine: rollouts from a transformers model, batched, InternVL images included. The embedded default.

Per-token log-probs are log_softmax(logits / temperature) of the policy at each sampled token: the quantity the
trainer recomputes by teacher forcing (top-k / top-p change which tokens can be drawn, not this value). Image
tokens are never sampled. Each prompt is encoded (tokenised, images tiled) once per call, and its model inputs go
out with its rollouts (`Rollout.prompt_inputs`), so a trainer in the same process scores them without encoding the
prompt again. A request with an assistant prefix is encoded with the prefix's tokens at the end of its prompt, so
the rollouts continue it.
"""

from __future__ import annotations

import hashlib

import torch

from cascade_rl.models import collate_prompts, encode_request, tokenizer_of
from cascade_rl.models.gathered import full_weights
from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams
from cascade_rl.rollout.sampler import decode


class HFEngine:
    """Sample completions with a KV-cached decode loop (rollout/sampler.py) in batches of `batch_size` sequences
    (left padded), one random generator per sequence."""

    def __init__(self, model, processor, *, max_tiles: int = 12, batch_size: int = 8):
        self.model = model
        self.processor = processor
        self.max_tiles = max_tiles
        self.batch_size = batch_size
        tokenizer = tokenizer_of(processor)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        # An image token inside a completion would break every later forward (features vs placeholders).
        self.suppressed = list(getattr(processor, "image_token_ids", []))

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request.

        Samples of several prompts share batches of `batch_size` sequences. With `sampling.seed` set, sample k of a
        prompt depends only on (seed, prompt_id, k): the same prompt gives the same rollouts whatever else is in
        the call, so an interrupted run that resumes reproduces the uninterrupted one. The n rollouts of a request
        share its encoded prompt (`prompt_inputs`: `models.PromptInputs`).
        """
        prompts = [encode_request(self.processor, r, max_tiles=self.max_tiles) for r in requests]
        jobs = [(i, k) for i in range(len(requests)) for k in range(n)]
        tokenizer = tokenizer_of(self.processor)
        rollouts = []
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            generators = [self._generator(sampling, requests[i].prompt_id, k) for i, k in batch]
            outputs = self._generate_batch([prompts[i] for i, _ in batch], sampling, generators)
            for (i, k), (ids, logps, reason) in zip(batch, outputs):
                text = requests[i].assistant_prefix + tokenizer.decode(ids[:-1] if reason == "stop" else ids)
                meta = dict(requests[i].meta)
                rollouts.append(Rollout(requests[i].prompt_id, k, text, ids, logps, reason, meta, prompts[i]))
        return rollouts

    def _generator(self, sampling: SamplingParams, prompt_id: str, k: int) -> torch.Generator | None:
        if sampling.temperature <= 0:
            return None
        generator = torch.Generator(device=next(self.model.parameters()).device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(request_seed(sampling.seed, prompt_id, k))
        return generator

    def _generate_batch(self, prompts, sampling: SamplingParams, generators):
        """Decode one batch; returns [(completion ids [T], log-probs [T], finish reason)]."""
        device = next(self.model.parameters()).device
        inputs = collate_prompts(prompts, self.pad_id, device=device, dtype=self.model.dtype)
        tokens, logps = decode(
            self.model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs.get("pixel_values"),
            sampling,
            generators,
            eos_id=self.eos_id,
            suppressed=self.suppressed,
        )
        return [self._trim(ids, lp) for ids, lp in zip(tokens.cpu(), logps.float().cpu())]

    def _trim(self, ids: torch.Tensor, logps: torch.Tensor) -> tuple[list[int], list[float], str]:
        """Cut at the first end-of-turn token (kept); no end-of-turn within the budget means "length"."""
        hits = (ids == self.eos_id).nonzero()
        if len(hits):
            end = int(hits[0]) + 1
            return ids[:end].tolist(), logps[:end].tolist(), "stop"
        return ids.tolist(), logps.tolist(), "length"

    def update_weights(self, model) -> None:
        """Adopt new policy weights (a no-op when the engine already holds the trained model object). The weights
        come a bucket at a time (`full_weights`), so a policy partitioned by ZeRO-3 is never whole on one rank;
        then every rank calls this."""
        if model is self.model:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in full_weights(model):
                params[name].copy_(tensor)

    def close(self) -> None:
        self.model = None


def request_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """A 63-bit seed from (run seed, prompt id, sample index), stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
