"""The one place engines are built: the rollout, GSPO and eval stages and `cascade-rl serve` all call `make_engine`.

Back-ends are imported only when chosen (vLLM is an optional extra; the server client needs no model library).
"""

from __future__ import annotations

import typing
from typing import Literal

from cascade_rl.config import choice_error
from cascade_rl.rollout.base import RolloutEngine
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm

EngineKind = Literal["hf", "vllm", "server", "hf-server"]


def make_engine(
    kind: EngineKind,
    model_path: str = "",
    *,
    model=None,
    processor=None,
    max_tiles: int = 12,
    batch_size: int = 8,
    vllm: VLLMSettings | None = None,
    server_urls: list[str] | None = None,
    server_wait_s: float = 300.0,
    **server_options,
) -> RolloutEngine:
    """A rollout engine of `kind` over the checkpoint directory `model_path`.

    "hf": transformers generation over `model` (with its `processor`) when given — GSPO passes the trainer's own
    model object, so the engine samples from the weights being trained — else over the checkpoint, loaded here in
    eval mode; `batch_size` sequences per decode batch.
    "vllm": a colocated vLLM engine with `vllm` settings; vLLM reads the weights itself, so only the processor is
    loaded (`processor` when given); `model` is not used.
    "server": a client of the `vllm serve` processes at `server_urls` (`cascade-rl serve --engine vllm`), weights
    through vLLM's weight-transfer API; "hf-server": a client of the one HF test-double server at `server_urls[0]`
    (`cascade-rl serve --engine hf`). Both are returned once every server answers /health (at most `server_wait_s`);
    `server_options`: timeout_s, retries, weight_transport ("auto": nccl with CUDA, else gloo; http for hf-server
    only), group_host, group_port.
    """
    if kind in ("server", "hf-server"):
        engine = _server_client(kind, list(server_urls or []), processor, max_tiles=max_tiles, **server_options)
        engine.wait_until_ready(server_wait_s)
        return engine
    if kind == "vllm":
        from cascade_rl.models.io import load_processor
        from cascade_rl.rollout.vllm import VLLMEngine

        require_vllm()  # before the processor is loaded
        processor = processor if processor is not None else load_processor(model_path)
        return VLLMEngine(model_path, processor, max_tiles=max_tiles, settings=vllm)
    if kind != "hf":
        raise ValueError(choice_error("engine", kind, typing.get_args(EngineKind)))
    from cascade_rl.rollout.hf import HFEngine

    if model is None:
        from cascade_rl.models.io import load_policy

        model, processor = load_policy(model_path)
        model.eval()
    elif processor is None:
        raise ValueError("engine hf over a given model needs that model's processor too")
    return HFEngine(model, processor, max_tiles=max_tiles, batch_size=batch_size)


def check_server_settings(kind: str, urls: list[str], weight_transport: str) -> None:
    """engine server: `vllm serve` processes (one or more URLs), weights over nccl or gloo; engine hf-server: one
    `cascade-rl serve --engine hf` (the CPU test double), weights also over http."""
    if kind not in ("server", "hf-server"):
        return
    if not urls:
        raise ValueError(f"engine {kind} needs server_urls")
    if kind == "server" and weight_transport == "http":
        raise ValueError("weight_transport http is only for engine hf-server; vLLM servers take nccl or gloo")
    if kind == "hf-server" and len(urls) > 1:
        raise ValueError("engine hf-server talks to one server; several servers are vLLM's: use engine server")


def _server_client(
    kind: str, urls: list[str], processor, *, max_tiles: int, weight_transport: str = "auto", **options
):
    """The client of the configured rollout servers: vLLM servers (kind server) or the HF test double."""
    import torch

    check_server_settings(kind, urls, weight_transport)
    if weight_transport == "auto":
        weight_transport = "http" if kind == "hf-server" else ("nccl" if torch.cuda.is_available() else "gloo")
    if kind == "server":
        from cascade_rl.rollout.vllm_server import VLLMServerEngine

        return VLLMServerEngine(urls, processor, max_tiles=max_tiles, weight_backend=weight_transport, **options)
    from cascade_rl.rollout.client import ServerEngine  # the HF test double tiles with its own max_tiles

    return ServerEngine(urls[0], weight_transport=weight_transport, **options)
