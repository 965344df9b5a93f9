"""HFEngine: rollouts from transformers `generate`, batched, InternVL images included. The embedded default.

Per-token log-probs are log_softmax(logits / temperature) of the policy at each sampled token: the quantity the
trainer recomputes by teacher forcing (top-k / top-p change which tokens can be drawn, not this value). Image
tokens are never sampled.
"""

from __future__ import annotations

import hashlib

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
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request.

        The n samples of one request are generated together, in batches of `batch_size`. With `sampling.seed` set,
        each request's samples depend only on (seed, prompt_id): the same prompt gives the same rollouts whatever
        else is in the call, so an interrupted run that resumes reproduces the uninterrupted one.
        """
        tokenizer = tokenizer_of(self.processor)
        rollouts = []
        for request in requests:
            prompt = encode_prompt(self.processor, request.messages, request.images, max_tiles=self.max_tiles)
            for start in range(0, n, self.batch_size):
                size = min(self.batch_size, n - start)
                seed = None if sampling.seed is None else request_seed(sampling.seed, request.prompt_id, start)
                for k, (ids, logps, reason) in enumerate(self._generate_batch([prompt] * size, sampling, seed)):
                    text = tokenizer.decode(ids[:-1] if reason == "stop" else ids)
                    meta = dict(request.meta)
                    rollouts.append(Rollout(request.prompt_id, start + k, text, ids, logps, reason, meta))
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


def request_seed(seed: int, prompt_id: str, offset: int) -> int:
    """A 63-bit seed from (run seed, prompt id, first sample index), stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
