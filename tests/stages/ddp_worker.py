"""Entry point of a spawned rank for the DDP tests (importable by child processes: tests/ is on sys.path)."""

import os

import torch

from cascade_rl.stages.mpo import MPOConfig, run_mpo


def mpo_rank_main(rank: int, world: int, port: int, config: MPOConfig, env: dict | None = None) -> None:
    """env: extra variables, e.g. what `accelerate launch` sets for DeepSpeed (`deepspeed_env`)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.update(env or {})
    torch.set_num_threads(1)
    run_mpo(config)


def deepspeed_env(config_file, world: int = 2) -> dict:
    """What `accelerate launch --config_file recipes/deepspeed/accelerate_zero*.yaml --mixed_precision no` sets."""
    return {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config_file),
        "ACCELERATE_MIXED_PRECISION": "no",
        "LOCAL_WORLD_SIZE": str(world),
    }
