"""HFEngine: rollouts from transformers `generate`, batched, InternVL images included. The embedded default.

Per-token log-probs are log_softmax(logits / temperature) of the policy at each sampled token: the quantity the
trainer recomputes by teacher forcing (top-k / top-p change which tokens can be drawn, not this value). Image
tokens are never sampled.
"""

from __future__ import annotations

import torch

from cascade_rl.models import encode_prompt, tokenizer_of
from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams


class HFEngine:
    """Sample completions with `model.generate` in batches of `batch_size` sequences (left padded)."""

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
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request."""
        prompts = [encode_prompt(self.processor, r.messages, r.images, max_tiles=self.max_tiles) for r in requests]
        jobs = [(i, k) for i in range(len(requests)) for k in range(n)]
        rollouts = []
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            seed = None if sampling.seed is None else sampling.seed + start
            outputs = self._generate_batch([prompts[i] for i, _ in batch], sampling, seed)
            for (i, k), (ids, logps, reason) in zip(batch, outputs):
                text = tokenizer_of(self.processor).decode(ids[:-1] if reason == "stop" else ids)
                rollouts.append(Rollout(requests[i].prompt_id, k, text, ids, logps, reason, dict(requests[i].meta)))
        return rollouts

    @torch.no_grad()
    def _generate_batch(self, prompts, sampling: SamplingParams, seed: int | None):
        """Generate for one batch; returns [(completion ids [T], log-probs [T], finish reason)]."""
        input_ids, attention_mask = left_pad([p.input_ids for p in prompts], self.pad_id)
        pixels = [p.pixel_values for p in prompts if p.pixel_values is not None]
        device = next(self.model.parameters()).device
        kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
            suppress_tokens=self.suppressed or None,
            **sampling_kwargs(sampling),
        )
        if pixels:
            kwargs["pixel_values"] = torch.cat(pixels).to(device, self.model.dtype)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**kwargs)
        new_tokens = out.sequences[:, input_ids.shape[1] :].cpu()
        temperature = sampling.temperature if sampling.temperature > 0 else 1.0
        logits = torch.stack(out.logits, dim=1).float().cpu() / temperature  # [B, T, V]
        token_logps = torch.log_softmax(logits, -1).gather(-1, new_tokens[..., None])[..., 0]
        return [self._trim(ids, logps) for ids, logps in zip(new_tokens, token_logps)]

    def _trim(self, ids: torch.Tensor, logps: torch.Tensor) -> tuple[list[int], list[float], str]:
        """Cut at the first end-of-turn token (kept); no end-of-turn within the budget means "length"."""
        hits = (ids == self.eos_id).nonzero()
        if len(hits):
            end = int(hits[0]) + 1
            return ids[:end].tolist(), logps[:end].tolist(), "stop"
        return ids.tolist(), logps.tolist(), "length"

    def update_weights(self, model) -> None:
        """Adopt new policy weights (a no-op when the engine already holds the trained model object)."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def close(self) -> None:
        self.model = None


def sampling_kwargs(sampling: SamplingParams) -> dict:
    """transformers generate arguments for SamplingParams; temperature 0 means greedy."""
    if sampling.temperature <= 0:
        return {"do_sample": False}
    return {
        "do_sample": True,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else None,
    }


def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into [B, T_max] with left padding, and the matching attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return ids, mask
