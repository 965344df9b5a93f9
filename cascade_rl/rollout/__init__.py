"""Rollout engines: one protocol (`generate(requests, n=, sampling=)`), several back-ends."""

from cascade_rl.rollout.base import (
    EngineUnavailable,
    Rollout,
    RolloutEngine,
    RolloutRequest,
    SamplingConfig,
    SamplingParams,
)
from cascade_rl.rollout.hf import HFEngine

__all__ = [
    "EngineUnavailable",
    "HFEngine",
    "Rollout",
    "RolloutEngine",
    "RolloutRequest",
    "SamplingConfig",
    "SamplingParams",
]
