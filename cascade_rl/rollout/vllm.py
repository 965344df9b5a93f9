"""VLLMEngine: rollouts from `vllm.LLM` offline generation in the trainer's process (optional extra `[vllm]`).

- Prompts are rendered with the checkpoint's own chat template; an image part becomes `<IMG_CONTEXT>`, which vLLM's
  InternVL processor expands exactly as `models.encode_prompt` does (a test checks the token ids are equal). A
  request's assistant prefix ends the rendered prompt (`models.chat.render_prompt`), so the samples continue it.
  Each request carries its per-image tile budget (`models.tiling_kwargs`: max(1, max_tiles // images)).
  vLLM tiles the images inside vLLM, so these rollouts bring no `prompt_inputs`: a trainer encodes the prompt
  for scoring itself (train/groups.py::make_group), once per prompt.
- n samples per prompt come from one request with `n=`. With `sampling.seed` set, the request is seeded by
  (seed, prompt id) and vLLM gives sample k the seed + k: a prompt's samples do not depend on what else is in the call,
  and differ from every other prompt's.
- Log-probs are vLLM's `processed_logprobs`: log_softmax of the logits after temperature (and after top-k / top-p
  filtering when those are on), the quantity the trainer recomputes as log_softmax(logits / T). Image tokens are
  never sampled (logit bias −100), which removes their share p_img from the normaliser: engine log-probs exceed the
  trainer's by log(1 / (1 − p_img)), about p_img (tests measure it).
- Weights: `update_weights(model)` loads the trainer's weights in-process through vLLM's in-place reload (the
  engine core runs in this process: VLLM_ENABLE_V1_MULTIPROCESSING=0), then drops the prefix cache and the encoder
  cache, whose entries (prompt KV, image embeddings) belong to the old weights.
- One engine per trainer rank under several processes (vLLM's `external_launcher` executor, see `per_rank_executor`).
- Colocated on a GPU with `settings.sleep`: between calls the engine sleeps (weights offloaded, KV cache freed) so
  training gets the memory back; a weight update wakes the weights only, generation then wakes the KV cache.
"""

from __future__ import annotations

import os

from cascade_rl.models import tiling_kwargs, tokenizer_of
from cascade_rl.models.chat import render_prompt
from cascade_rl.models.gathered import full_weights
from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams
from cascade_rl.rollout.hf import request_seed
from cascade_rl.rollout.vllm_support import VLLMSettings, check_servable, require_vllm

IMAGE_TOKEN_BIAS = -100.0  # vLLM's smallest logit bias


class VLLMEngine:
    """Colocated vLLM engine over a Hugging Face format checkpoint directory (InternVL or a causal LM)."""

    def __init__(
        self,
        model_path: str,
        processor,
        *,
        max_tiles: int = 12,
        settings: VLLMSettings | None = None,
        **llm_kwargs,
    ):
        require_vllm()
        check_servable(model_path)
        settings = settings or VLLMSettings()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # weights must be reachable in this process
        from vllm import LLM  # imported here: vLLM is an optional extra
        from vllm.platforms import current_platform

        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.sleep_between_calls = settings.sleep and current_platform.is_sleep_mode_available()
        self.awake = {"weights", "kv_cache"}
        self.max_tiles = max_tiles
        if hasattr(processor, "image_processor"):  # the largest budget (one image); each request sets its own
            llm_kwargs.setdefault("mm_processor_kwargs", tiling_kwargs(max_tiles))
        if settings.max_model_len:
            llm_kwargs.setdefault("max_model_len", settings.max_model_len)
        if current_platform.is_cpu():
            # vLLM's CPU backend crashes on a seeded request whose prefill is split over steps (it rewinds the
            # request's generator, which CPU generators cannot do): prefill every prompt whole.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        if settings.kv_cache_gib:
            llm_kwargs.setdefault("kv_cache_memory_bytes", int(settings.kv_cache_gib * 2**30))
        llm_kwargs.update(per_rank_executor())
        self.llm = LLM(
            model=str(model_path),
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager,
            enable_sleep_mode=self.sleep_between_calls,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # sampling comes from SamplingParams only, not the checkpoint's defaults
            **llm_kwargs,
        )
        self.suppressed = {int(i): IMAGE_TOKEN_BIAS for i in getattr(processor, "image_token_ids", [])}

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        """len(requests) × n rollouts, request by request, sample index 0..n-1 within each request."""
        prompts = [self._prompt(r) for r in requests]
        params = [self._sampling(n, sampling, r.prompt_id) for r in requests]
        self._wake(["weights", "kv_cache"])
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._sleep()
        return [self._rollout(r, k, s) for r, out in zip(requests, outputs) for k, s in enumerate(out.outputs)]

    def _rollout(self, request: RolloutRequest, k: int, sample) -> Rollout:
        ids = list(sample.token_ids)
        logps = [step[token].logprob for step, token in zip(sample.logprobs, ids)]
        stopped = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        reason = "stop" if stopped or sample.finish_reason == "stop" else "length"
        text = self.tokenizer.decode(ids[:-1] if stopped else ids)  # as HFEngine: special tokens kept, end cut
        return Rollout(request.prompt_id, k, request.assistant_prefix + text, ids, logps, reason, dict(request.meta))

    def _prompt(self, request: RolloutRequest) -> dict:
        prompt = {"prompt": render_prompt(self.processor, request.chat())}  # an assistant prefix ends it, open
        if request.images:
            prompt["multi_modal_data"] = {"image": [im.convert("RGB") for im in request.images]}
            prompt["mm_processor_kwargs"] = tiling_kwargs(self.max_tiles, len(request.images))
        return prompt

    def _sampling(self, n: int, sampling: SamplingParams, prompt_id: str):
        from vllm import SamplingParams as VllmSampling

        seed = None if sampling.seed is None else request_seed(sampling.seed, prompt_id, 0) % 2**31
        return VllmSampling(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,
            logit_bias=self.suppressed or None,
            skip_special_tokens=False,
        )

    def update_weights(self, model) -> None:
        """Load the trainer's weights (Hugging Face names; vLLM maps them) into the in-process engine. A tied tensor
        goes once, under its first name, as in a saved checkpoint (vLLM keeps no separate tied LM head). Under
        ZeRO-3 the weights are gathered a bucket at a time as vLLM reads them (`full_weights`; every rank calls
        this, each for its own engine)."""
        self.load_weights(full_weights(model))

    def load_weights(self, named) -> None:
        """Load (Hugging Face name, tensor) pairs as they come, e.g. buckets arriving over a weight group."""
        self._wake(["weights"])  # the KV cache stays asleep until the next generate
        # vLLM's in-place reload: checkpoint-format names and shapes in, kernel layouts (e.g. the CPU backend's
        # repacked linear weights) rebuilt after loading, as when the checkpoint was first read.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named, "is_checkpoint_format": True})
        self.llm.apply_model(repack_embeddings)
        self.llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
        self.llm.llm_engine.reset_encoder_cache()  # and so were cached image embeddings

    def _wake(self, tags: list[str]) -> None:
        missing = [tag for tag in tags if tag not in self.awake]
        if missing:
            self.llm.wake_up(tags=missing)
            self.awake.update(missing)

    def _sleep(self) -> None:
        if self.sleep_between_calls and self.awake:
            self.llm.sleep(level=1)
            self.awake.clear()

    def close(self) -> None:
        """Free the engine (its KV cache and weights) so another can start in this process."""
        import gc

        engine_core = self.llm.llm_engine.engine_core
        del self.llm
        try:
            engine_core.shutdown()  # also destroys the process groups vLLM made or joined
        except ValueError as err:
            # A trainer's accelerator (end of training) or another engine in this process already destroyed them:
            # nothing is left to shut down but the objects themselves.
            if "process group" not in str(err).lower():
                raise
        gc.collect()


def per_rank_executor() -> dict:
    """LLM arguments for one engine per trainer rank. Under several processes (`accelerate launch`, torchrun) vLLM's
    default executor would start every rank's engine on device 0; its `external_launcher` executor joins the
    trainer's process group instead and takes the device of LOCAL_RANK, so each rank samples on its own device."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return {}
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return {"distributed_executor_backend": "external_launcher"}


def repack_embeddings(model) -> None:
    """Rebuild the GEMM kernels of the embedding / LM-head modules from their current weights.

    vLLM's CPU backend packs the LM head's weight for its GEMM when the model loads. With tied embeddings the in-place
    reload (vLLM 0.32) updates the shared weight but not that packed copy, so the head kept scoring with the old
    embeddings (tests/vllm_cpu/test_engine.py caught it). Embedding modules keep their weight, so repacking is safe; on
    GPUs, where the head reads the weight directly, it does nothing.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding):
            module.quant_method.process_weights_after_loading(module)
