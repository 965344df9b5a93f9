"""VLLMEngine: rollouts from `vllm.LLM` offline generation (optional extra `cascade-rl[vllm]`, GPU only).

Prompts are rendered with the checkpoint's own chat template (an image part becomes `<IMG_CONTEXT>`, which vLLM's
InternVL processor expands); n samples per prompt come from one request with `n=`; `logprobs=0` returns the
log-prob of each sampled token. Not yet verified on a GPU: see the README's support table.
"""

from __future__ import annotations

from cascade_rl.models import tokenizer_of
from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams


class VLLMEngine:
    """Colocated vLLM engine over a Hugging Face format checkpoint directory."""

    def __init__(self, model_path: str, processor, *, max_tiles: int = 12, **llm_kwargs):
        from vllm import LLM  # imported here: vLLM is an optional extra

        self.processor = processor
        self.max_tiles = max_tiles
        llm_kwargs.setdefault("mm_processor_kwargs", {"max_patches": max_tiles, "crop_to_patches": True})
        self.llm = LLM(model=str(model_path), **llm_kwargs)

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request."""
        prompts = [self._prompt(r) for r in requests]
        outputs = self.llm.generate(prompts, self._sampling(n, sampling), use_tqdm=False)
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
        """Weight sync into a colocated vLLM belongs to the online stage; the offline stage samples one checkpoint."""
        raise NotImplementedError("VLLMEngine.update_weights: reload the engine from the saved checkpoint instead")

    def close(self) -> None:
        del self.llm
