"""VLLMEngine: rollouts from `vllm.LLM` offline generation (optional extra `cascade-rl[vllm]`, GPU only).

Prompts are rendered with the checkpoint's own chat template (an image part becomes `<IMG_CONTEXT>`, which vLLM's
InternVL processor expands); n samples per prompt come from one request with `n=`; `logprobs=0` returns the
log-prob of each sampled token. Colocated with training: with `sleep=True` the engine sleeps (weights offloaded,
KV cache freed) between calls so the trainer gets the GPU memory back, and `update_weights` loads the trainer's
weights in-process (vLLM's engine core runs in this process: VLLM_ENABLE_V1_MULTIPROCESSING=0).
Not yet verified on a GPU: see the README's support table.
"""

from __future__ import annotations

import os

from cascade_rl.models import tokenizer_of
from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams


class VLLMEngine:
    """Colocated vLLM engine over a Hugging Face format checkpoint directory."""

    def __init__(self, model_path: str, processor, *, max_tiles: int = 12, sleep: bool = False, **llm_kwargs):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights must be reachable in-process
        from vllm import LLM  # imported here: vLLM is an optional extra

        self.processor = processor
        self.max_tiles = max_tiles
        self.sleep_between_calls, self.asleep = sleep, False
        llm_kwargs.setdefault("mm_processor_kwargs", {"max_patches": max_tiles, "crop_to_patches": True})
        self.llm = LLM(model=str(model_path), enable_sleep_mode=sleep, **llm_kwargs)

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request."""
        prompts = [self._prompt(r) for r in requests]
        self._wake()
        outputs = self.llm.generate(prompts, self._sampling(n, sampling), use_tqdm=False)
        self._sleep()
        eos = tokenizer_of(self.processor).eos_token_id
        rollouts = []
        for request, output in zip(requests, outputs):
            for k, sample in enumerate(output.outputs):
                ids = list(sample.token_ids)
                logps = [step[token].logprob for step, token in zip(sample.logprobs, ids)]
                reason = "stop" if sample.finish_reason == "stop" or (ids and ids[-1] == eos) else "length"
                rollouts.append(Rollout(request.prompt_id, k, sample.text, ids, logps, reason, dict(request.meta)))
        return rollouts

    def _prompt(self, request: RolloutRequest) -> dict:
        text = self.processor.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        prompt = {"prompt": text}
        if request.images:
            prompt["multi_modal_data"] = {"image": request.images}
        return prompt

    def _sampling(self, n: int, sampling: SamplingParams):
        from vllm import SamplingParams as VllmSampling

        return VllmSampling(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            logprobs=0,
        )

    def update_weights(self, model) -> None:
        """Load the trainer's weights (Hugging Face names; vLLM maps them) into the in-process engine."""
        self.load_weights((n, p.detach()) for n, p in model.state_dict().items())

    def load_weights(self, named) -> None:
        """Load (Hugging Face name, tensor) pairs as they come, e.g. buckets arriving over a weight group."""
        self._wake()
        worker_model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        worker_model.load_weights(weights=named)
        self.llm.reset_prefix_cache()  # cached prompt states belong to the old weights
        self._sleep()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        if self.sleep_between_calls and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def close(self) -> None:
        del self.llm
