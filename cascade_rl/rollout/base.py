"""The rollout-engine protocol: requests in, sampled completions with token ids and log-probs out.

Engines know nothing about rewards, optimizers or stores; stages glue them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    from cascade_rl.models.inputs import PromptInputs


class EngineUnavailable(RuntimeError):
    """An engine that cannot run on this machine (with the install command or the setting that avoids it), or a
    rollout server that cannot be reached or does not answer in time (with its URL, route and training step)."""


@dataclass
class SamplingParams:
    """How to sample: InternVL's offline pipeline uses temperature 0.7, top_k 50, top_p 1.0 (SPEC §2)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k filtering (vLLM convention)
    max_new_tokens: int = 256
    seed: int | None = None


@dataclass
class RolloutRequest:
    """One prompt: chat `messages` (OpenAI/HF style, image parts as {"type": "image"}) and its images.

    `prompt_id` keys the prompt in stores and ledgers; `meta` carries dataset columns (answer, bbox, ...)
    that the engine passes through untouched.
    """

    prompt_id: str
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout:
    """One sampled completion.

    token_ids: [T] completion token ids, `logprobs`: [T] per-token log-probs under the sampling policy
    (after temperature), finish_reason: "stop" (end-of-turn token) or "length" (hit max_new_tokens).
    prompt_inputs: the prompt's model inputs (ids, tiled pixels) when the engine encoded the prompt in this process
    (HFEngine; the prompt's n rollouts share one), else None: vLLM tiles inside vLLM, a server on its own machine.
    Not compared, not sent over the wire.
    """

    prompt_id: str
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    meta: dict[str, Any] = field(default_factory=dict)
    prompt_inputs: PromptInputs | None = field(default=None, compare=False, repr=False)


class RolloutEngine(Protocol):
    """generate(requests, n, sampling) -> len(requests) * n rollouts, grouped by request, in request order."""

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]: ...

    def update_weights(self, model: Any) -> None: ...

    def close(self) -> None: ...
