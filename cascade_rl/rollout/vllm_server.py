"""VLLMServerEngine: the RolloutEngine protocol over a fleet of `vllm serve` processes on dedicated devices.

- Rollouts: each prompt is one OpenAI chat-completions request (images inline as data URLs; `n` samples; vLLM's
  extensions `return_token_ids`, `top_k`, `seed`, `skip_special_tokens`; `logprobs` gives the sampled tokens'
  log-probs, which the servers compute as `processed_logprobs`: `cascade-rl serve --engine vllm` sets that). A
  request's assistant prefix goes as the last message with `continue_final_message` (vLLM's prefill). Prompt i
  of a call goes to server i mod K and all requests of a call are in flight at once, so vLLM batches them
  continuously. Seeds, image-token bias and text decoding are those of the colocated `VLLMEngine`, so a server and a
  colocated engine sample the same completions.
- Weights: vLLM's weight-transfer protocol (`/init_weight_transfer_engine`, `/start_weight_update`,
  `/update_weights`, `/finish_weight_update`; servers started with VLLM_SERVER_DEV_MODE=1) driven by vLLM's own
  trainer engines: "nccl" between GPUs, "gloo" (`rollout/vllm_transfer.py`) on CPUs. One group spans the trainer's
  rank 0 and every worker of every server, so each push is one broadcast; trainable weights only, cast to the
  servers' dtype. Under several trainer processes (DDP, DeepSpeed ZeRO-2/3) every rank samples its own prompts from
  the servers and calls the push; rank 0 sends while the other ranks take part in ZeRO-3's bucketed gathers
  (`rollout/vllm_transfer.py::PolicySource`), so no rank holds the whole model at once.
  After a push the servers' prefix and encoder caches are reset (their entries belong to the old weights). A push
  that fails drops the group: the next one forms a new group.
- Every HTTP call has a timeout; connection failures, timeouts and 502/503/504 answers are retried with exponential
  backoff; the error names the server's URL, the route and the training step.
"""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor

from cascade_rl.models import tiling_kwargs, tokenizer_of
from cascade_rl.rollout.base import EngineUnavailable, Rollout, RolloutRequest, SamplingParams
from cascade_rl.rollout.client import TransferFailed
from cascade_rl.rollout.collective import DEFAULT_BUCKET_BYTES
from cascade_rl.rollout.hf import request_seed
from cascade_rl.rollout.http import ServerCalls, wait_for_health
from cascade_rl.rollout.vllm import IMAGE_TOKEN_BIAS


class FleetClient:
    """vLLM's weight-sync client protocol over several servers: each call goes to every server at once.

    The transfer group holds the trainer at rank 0 and the servers' workers after it; server s's workers start at
    1 + (workers of servers before s), so the init payload's `rank_offset` is rewritten per server."""

    def __init__(self, servers: list[ServerCalls], world_sizes: list[int]):
        self.servers, self.world_sizes = servers, world_sizes

    def _each(self, fn) -> None:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            for future in [pool.submit(fn, i, s) for i, s in enumerate(self.servers)]:
                future.result()

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offsets = [1 + sum(self.world_sizes[:i]) for i in range(len(self.servers))]
        info = lambda i: {**init_info, "rank_offset": offsets[i]}  # noqa: E731
        self._each(lambda i, s: s.post("/init_weight_transfer_engine", {"init_info": info(i)}, retry=False))

    def start_weight_update(self) -> None:
        self._each(lambda i, s: s.post("/start_weight_update", retry=False))

    def update_weights(self, update_info) -> None:
        self._each(lambda i, s: s.post("/update_weights", {"update_info": update_info}, retry=False))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        body = {"weight_version": weight_version} if weight_version is not None else None
        self._each(lambda i, s: s.post("/finish_weight_update", body, retry=False))
        self._each(lambda i, s: (s.post("/reset_prefix_cache"), s.post("/reset_encoder_cache")))


class VLLMServerEngine:
    """Rollouts from, and weights to, the `vllm serve` processes at `urls`.

    processor: the policy's processor (chat template, tokenizer, image token ids); max_tiles: the tile budget of a
    prompt, sent with each request (`models.tiling_kwargs`); weight_backend: "nccl" or "gloo"
    (the servers' `--weight-transfer-config` backend); group_host: this trainer's address as the servers see it;
    group_port: 0 picks a free port; wire_dtype: the dtype weights travel in ("bfloat16", "float32"; "auto": the
    dtype the servers run, read from their /server_info; None: the trainer's own).
    """

    def __init__(
        self,
        urls: list[str],
        processor,
        *,
        max_tiles: int = 12,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        weight_backend: str = "nccl",
        group_host: str = "127.0.0.1",
        group_port: int = 0,
        wire_dtype: str | None = "auto",
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        if not urls:
            raise ValueError("VLLMServerEngine needs at least one server URL")
        self.servers = [ServerCalls(u, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s) for u in urls]
        self.processor, self.tokenizer, self.max_tiles = processor, tokenizer_of(processor), max_tiles
        self.suppressed = {str(int(i)): IMAGE_TOKEN_BIAS for i in getattr(processor, "image_token_ids", [])}
        self.weight_backend, self.group_host, self.group_port = weight_backend, group_host, group_port
        self.wire_dtype, self.bucket_bytes, self.timeout_s = wire_dtype, bucket_bytes, timeout_s
        self.trainer_rank = trainer_rank()
        self.sender = self.trainer_rank == 0  # rank 0 sends; under several processes the others only gather
        self.transfer = None  # vLLM's trainer-side engine, formed at the first push
        self.model_names: dict[str, str] = {}
        self.weights_version = 0

    @property
    def step(self) -> int | None:
        return self.servers[0].step

    @step.setter
    def step(self, value: int | None) -> None:
        for server in self.servers:
            server.step = value

    def wait_until_ready(self, timeout_s: float = 300.0) -> None:
        wait_for_health(self.servers, timeout_s)

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        """len(requests) × n rollouts in request order; all requests in flight at once, spread over the servers."""
        if not requests:
            return []
        with ThreadPoolExecutor(min(len(requests), 64)) as pool:
            futures = [
                pool.submit(self._complete, self.servers[i % len(self.servers)], r, n, sampling)
                for i, r in enumerate(requests)
            ]
            return [rollout for future in futures for rollout in future.result()]

    def _complete(self, server: ServerCalls, request: RolloutRequest, n: int, sampling: SamplingParams):
        body = {
            "model": self._model_name(server),
            "messages": chat_messages(request),
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_tokens": sampling.max_new_tokens,
            "logprobs": True,
            "top_logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": False,
            # An assistant prefix is the last message, rendered open for the model to continue (vLLM's prefill).
            "add_generation_prompt": not request.assistant_prefix,
            "continue_final_message": bool(request.assistant_prefix),
        }
        if request.images:  # per-image tile budget, as every other path tiles (overrides the server's default)
            body["mm_processor_kwargs"] = tiling_kwargs(self.max_tiles, len(request.images))
        if sampling.seed is not None:
            body["seed"] = request_seed(sampling.seed, request.prompt_id, 0) % 2**31
        if self.suppressed:
            body["logit_bias"] = self.suppressed
        answer = server.post("/v1/chat/completions", body)

        def rollouts(answer: dict) -> list[Rollout]:
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            return [self._rollout(request, k, choice) for k, choice in enumerate(choices)]

        return server.read("/v1/chat/completions", answer, rollouts)

    def _rollout(self, request: RolloutRequest, k: int, choice: dict) -> Rollout:
        ids = list(choice["token_ids"])
        logps = [step["logprob"] for step in choice["logprobs"]["content"]]
        stopped = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        reason = "stop" if stopped or choice["finish_reason"] == "stop" else "length"
        text = self.tokenizer.decode(ids[:-1] if stopped else ids)  # as HFEngine: special tokens kept, end cut
        return Rollout(request.prompt_id, k, request.assistant_prefix + text, ids, logps, reason, dict(request.meta))

    def _model_name(self, server: ServerCalls) -> str:
        """The name the server serves its model under (asked once per server)."""
        if server.url not in self.model_names:
            self.model_names[server.url] = self._model_card(server)["id"]
        return self.model_names[server.url]

    def served_models(self) -> dict[str, str]:
        """Each server's URL → the checkpoint it loaded (its model card's `root`: the path given to --model)."""
        return {server.url: str(self._model_card(server).get("root") or "") for server in self.servers}

    @staticmethod
    def _model_card(server: ServerCalls) -> dict:
        answer = server.call("GET", "/v1/models")
        return server.read("/v1/models", answer, lambda a: dict(a["data"][0]))

    def update_weights(self, model) -> None:
        """Push the trainable weights to every server; under several trainer processes every rank calls this (vLLM's
        multi-rank trainer protocol: rank 0 sends, the others take part in ZeRO-3's gathers). The group is formed at
        the first push; a push that fails drops it and is tried again through a new group, with backoff, up to
        `retries` times; then `TransferFailed` names the servers that no longer answer. The ranks agree on each
        try's outcome (rank 0's), so they retry, and return, together."""
        self.weights_version += 1
        tries, backoff_s = self.servers[0].retries, self.servers[0].backoff_s
        for attempt in range(tries):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            failure = _rank_zero_says(self._try_push(model))
            if failure is None:
                return
            self._drop_group()
        silent = ", ".join(self._silent_servers()) or "none"
        raise TransferFailed(
            f"weight push {self.weights_version} failed after {tries} tries ({failure}); not answering: {silent}"
        )

    def _try_push(self, model) -> str | None:
        """One push; the failure's text (None when it went through). Every rank ends with the round's source
        iterated to its end: a sender that failed half-way finishes the gathers the other ranks are in, and no
        gathered bucket stays held."""
        source, failure = None, None
        try:
            if self.transfer is None:
                self.transfer = self._form_group(model)
            source = self.transfer.source = self._source(model)
            self.transfer.send_weights()
        except (EngineUnavailable, RuntimeError, ValueError) as err:
            failure = str(err) or type(err).__name__
        (source or policy_source(model, None)).finish_round()
        return failure

    def _source(self, model):
        """This round's weights: cast to the wire dtype on rank 0; the other ranks only gather, uncast."""
        if self.wire_dtype == "auto":
            self.wire_dtype = served_dtype(self.servers[0])
        return policy_source(model, self.wire_dtype if self.sender else None)

    def _silent_servers(self) -> list[str]:
        """URLs (with the step) of the servers whose /health does not answer now."""
        silent = []
        for server in self.servers:
            try:
                server.call("GET", "/health", retry=False, timeout_s=10.0)
            except EngineUnavailable:
                silent.append(server.where("/health"))
        return silent

    def _form_group(self, model):
        """vLLM's trainer engine; on rank 0 the group with every server's workers, on other ranks none."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from cascade_rl.rollout import vllm_transfer

        vllm_transfer.register()
        sizes = [int(s.call("GET", "/get_world_size")["world_size"]) for s in self.servers] if self.sender else []
        client = FleetClient(self.servers, sizes)
        info = self._init_info(1 + sum(sizes))
        return WeightTransferTrainerFactory.trainer_init(info, client=client, source=self._source(model))

    def _init_info(self, world_size: int):
        common = {"master_address": self.group_host, "world_size": world_size, "rank": self.trainer_rank}
        if self.weight_backend == "gloo":
            from cascade_rl.rollout.vllm_transfer import GlooTrainerInitInfo

            return GlooTrainerInitInfo(
                master_port=self.group_port, timeout_s=self.timeout_s, bucket_bytes=self.bucket_bytes, **common
            )
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        port = self.group_port or (_free_port() if self.sender else 0)
        return NCCLTrainerInitInfo(master_port=port, **common)

    def _drop_group(self) -> None:
        if self.transfer is not None:
            self.transfer.shutdown()
        self.transfer = None

    def close(self) -> None:
        self._drop_group()


def served_dtype(server: ServerCalls) -> str:
    """The dtype a vLLM server runs its model in ("bfloat16", ...), from the config summary /server_info reports."""
    summary = str(server.call("GET", "/server_info").get("vllm_config", ""))
    found = re.search(r"\bdtype=torch\.(\w+)", summary)
    if not found:
        raise EngineUnavailable(server.where("/server_info") + ": no model dtype in the answer; set the wire dtype")
    return found.group(1)


def policy_source(model, dtype: str | None):
    """The policy's trainable weights as a vLLM WeightSource (`PolicySource`), cast to `dtype` ("bfloat16", ...;
    None: each tensor's own)."""
    import torch

    from cascade_rl.rollout.vllm_transfer import PolicySource

    return PolicySource(model, getattr(torch, dtype) if dtype else None)


def chat_messages(request: RolloutRequest) -> list[dict]:
    """OpenAI chat messages (`request.chat()`: with the assistant prefix as the last message when there is one):
    each {"type": "image"} part becomes the next image as a PNG data URL."""
    images = iter(request.images)
    messages = []
    for message in request.chat():
        content = message["content"]
        if isinstance(content, list):
            content = [_image_part(next(images)) if part.get("type") == "image" else part for part in content]
        messages.append({**message, "content": content})
    return messages


def _image_part(image) -> dict:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def _rank_zero_says(failure: str | None) -> str | None:
    """Rank 0's `failure` on every trainer rank (itself on one process)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return failure
    said = [failure]
    dist.broadcast_object_list(said, src=0)
    return said[0]


def trainer_rank() -> int:
    """This trainer process's rank (0 on one process)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
