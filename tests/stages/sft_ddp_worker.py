"""Entry point of a spawned rank for the SFT DDP test (importable by child processes: tests/ is on sys.path)."""

import os

import torch
from stages.ddp_worker import mark_done

from cascade_rl.stages.sft import SFTConfig, run_sft


def sft_rank_main(rank: int, world: int, port: int, config: SFTConfig, env: dict | None = None) -> None:
    """env: extra variables, e.g. what `accelerate launch` sets for DeepSpeed (`deepspeed_env`)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.update(env or {})
    torch.set_num_threads(1)
    run_sft(config)
    mark_done()
