"""The one place engines are built: the rollout, GSPO and eval stages and `cascade-rl serve` all call `make_engine`.

Back-ends are imported only when chosen (vLLM is an optional extra; the server client needs no model library).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from cascade_rl.config import check_choices, choice_error
from cascade_rl.rollout.base import RolloutEngine
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm

EngineKind = Literal["hf", "vllm", "server", "hf-server"]
WeightTransport = Literal["auto", "nccl", "gloo", "http"]


@dataclass(frozen=True)
class ServerSettings:
    """The `server:` section of a stage that samples from rollout servers (engine server or hf-server).

    urls: the servers (`cascade-rl serve`); timeout_s / retries: per HTTP call (retried with exponential backoff);
    wait_s: how long to wait for every server to answer /health at the start. The weight keys are GSPO's, which
    pushes each step's weights: weight_transport ("auto": nccl with CUDA, else gloo; http for hf-server only),
    group_host (this trainer's address as the servers see it), group_port (0: a free port).
    """

    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000"])
    timeout_s: float = 600.0
    retries: int = 3
    wait_s: float = 300.0
    weight_transport: WeightTransport = "auto"
    group_host: str = "127.0.0.1"
    group_port: int = 0

    def __post_init__(self):
        check_choices(self)
        if self.retries < 1:
            raise ValueError(f"server.retries must be at least 1, got {self.retries}")


def make_engine(
    kind: EngineKind,
    model_path: str = "",
    *,
    model=None,
    processor=None,
    max_tiles: int = 12,
    batch_size: int = 8,
    vllm: VLLMSettings | None = None,
    server: ServerSettings | None = None,
) -> RolloutEngine:
    """A rollout engine of `kind` over the checkpoint directory `model_path`.

    "hf": transformers generation over `model` (with its `processor`) when given — GSPO passes the trainer's own
    model object, so the engine samples from the weights being trained — else over the checkpoint, loaded here in
    eval mode; `batch_size` sequences per decode batch.
    "vllm": a colocated vLLM engine with `vllm` settings; vLLM reads the weights itself, so only the processor is
    loaded (`processor` when given); `model` is not used.
    "server": a client of the `vllm serve` processes at `server.urls` (`cascade-rl serve --engine vllm`), weights
    through vLLM's weight-transfer API; "hf-server": a client of the one HF test-double server at `server.urls[0]`
    (`cascade-rl serve --engine hf`). Both are returned once every server answers /health (at most
    `server.wait_s`); the client needs `processor` (the policy's, or loaded from `model_path`).
    """
    if kind in ("server", "hf-server"):
        server = server or ServerSettings()
        engine = _server_client(kind, server, processor, model_path, max_tiles=max_tiles)
        engine.wait_until_ready(server.wait_s)
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


def check_server_settings(kind: str, server: ServerSettings) -> None:
    """engine server: `vllm serve` processes (one or more URLs), weights over nccl or gloo; engine hf-server: one
    `cascade-rl serve --engine hf` (the CPU test double), weights also over http."""
    if kind not in ("server", "hf-server"):
        return
    if not server.urls:
        raise ValueError(f"engine {kind} needs server.urls")
    if kind == "server" and server.weight_transport == "http":
        raise ValueError("server.weight_transport http is only for engine hf-server; vLLM servers take nccl or gloo")
    if kind == "hf-server" and len(server.urls) > 1:
        raise ValueError("engine hf-server talks to one server; several servers are vLLM's: use engine server")


def _server_client(kind: str, server: ServerSettings, processor, model_path: str, *, max_tiles: int):
    """The client of the configured rollout servers: vLLM servers (kind server) or the HF test double."""
    import torch

    check_server_settings(kind, server)
    transport = server.weight_transport
    if transport == "auto":
        transport = "http" if kind == "hf-server" else ("nccl" if torch.cuda.is_available() else "gloo")
    options = dict(timeout_s=server.timeout_s, retries=server.retries)
    options.update(group_host=server.group_host, group_port=server.group_port)
    if kind == "server":
        from cascade_rl.rollout.vllm_server import VLLMServerEngine

        if processor is None:
            from cascade_rl.models.io import load_processor

            processor = load_processor(model_path)
        return VLLMServerEngine(server.urls, processor, max_tiles=max_tiles, weight_backend=transport, **options)
    from cascade_rl.rollout.client import ServerEngine  # the HF test double tiles with its own max_tiles

    return ServerEngine(server.urls[0], weight_transport=transport, **options)
