"""The one place engines are built: the rollout, GSPO and eval stages and `cascade-rl serve` all call `make_engine`.

Back-ends are imported only when chosen (vLLM is an optional extra; the server client needs no model library).
"""

from __future__ import annotations

import typing
from typing import Literal

from cascade_rl.config import choice_error
from cascade_rl.rollout.base import RolloutEngine
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm

EngineKind = Literal["hf", "vllm", "server"]


def make_engine(
    kind: EngineKind,
    model_path: str = "",
    *,
    model=None,
    processor=None,
    max_tiles: int = 12,
    batch_size: int = 8,
    vllm: VLLMSettings | None = None,
    server_url: str = "",
    **server_options,
) -> RolloutEngine:
    """A rollout engine of `kind` over the checkpoint directory `model_path`.

    "hf": transformers generation over `model` (with its `processor`) when given — GSPO passes the trainer's own
    model object, so the engine samples from the weights being trained — else over the checkpoint, loaded here in
    eval mode; `batch_size` sequences per decode batch.
    "vllm": a colocated vLLM engine with `vllm` settings; vLLM reads the weights itself, so only the processor is
    loaded (`processor` when given); `model` is not used.
    "server": a client of the `cascade-rl serve` rollout server at `server_url`, once it answers /health;
    `server_options` go to ServerEngine (timeout_s, retries, weight_transport, group_host, group_port).
    """
    if kind == "server":
        from cascade_rl.rollout.client import ServerEngine

        engine = ServerEngine(server_url, **server_options)
        engine.wait_until_ready()
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
