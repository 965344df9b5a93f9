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
    """How an engine samples in one `generate` call (a stage's `SamplingConfig.params` builds it)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k filtering (vLLM convention)
    max_new_tokens: int = 256
    seed: int | None = None


@dataclass(frozen=True)
class SamplingConfig:
    """The `sampling:` section of the rollout, GSPO and eval stages: n completions per prompt, each drawn at
    `temperature` (0: greedy) from the top_k (-1: all) tokens within top_p of the probability mass, at most
    max_new_tokens long; `seed` seeds each sample by (seed, prompt id, sample index). Each stage has its own
    defaults (InternVL's MMPR rollouts: n 8 here, 32 released, T 0.7, top_k 50; GSPO: n 16, T 1.0; eval: greedy)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError("sampling.n and sampling.max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"need temperature ≥ 0 and 0 < top_p ≤ 1; got {self.temperature}, {self.top_p}")

    def params(self, seed: int | None = None) -> SamplingParams:
        """The engine's per-call SamplingParams; `seed` replaces `self.seed` (GSPO derives one per step)."""
        seed = self.seed if seed is None else seed
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.max_new_tokens, seed=seed)


@dataclass
class RolloutRequest:
    """One prompt: chat `messages` (OpenAI/HF style, image parts as {"type": "image"}) and its images.

    `prompt_id` keys the prompt in stores and ledgers; `meta` carries dataset columns (answer, bbox, ...)
    that the engine passes through untouched. `assistant_prefix`, when set, is the start of the assistant's reply:
    the engine continues it (prefill) instead of starting a new reply; the rollouts' token ids and log-probs are the
    continuation's, their text is the prefix followed by the continuation (DropoutNTP, stages/dropout_ntp.py).
    """

    prompt_id: str
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    assistant_prefix: str = ""

    def chat(self) -> list[dict[str, Any]]:
        """The messages an engine renders: `messages`, then the open assistant turn holding `assistant_prefix`
        when there is one (the template renders it without its end-of-turn, `models.chat.render_prompt`)."""
        if not self.assistant_prefix:
            return self.messages
        prefix = {"role": "assistant", "content": [{"type": "text", "text": self.assistant_prefix}]}
        return [*self.messages, prefix]


@dataclass
class Rollout:
    """One sampled completion.

    text: the decoded completion (end-of-turn cut), after the request's `assistant_prefix` when it has one.
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
