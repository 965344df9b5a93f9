"""Entry point of a spawned rank for the DDP tests (importable by child processes: tests/ is on sys.path)."""

import os

import torch

from cascade_rl.stages.mpo import MPOConfig, run_mpo


def mpo_rank_main(
    rank: int, world: int, port: int, config: MPOConfig, env: dict | None = None, crash_after_step: int = 0
) -> None:
    """env: extra variables, e.g. what `accelerate launch` sets for DeepSpeed (`deepspeed_env`);
    crash_after_step: every rank raises right after logging that step (a simulated crash; not KeyboardInterrupt,
    which torch.multiprocessing treats as a normal exit)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.update(env or {})
    torch.set_num_threads(1)
    if crash_after_step:
        crash_after(crash_after_step)
    run_mpo(config)


def crash_after(step: int) -> None:
    from cascade_rl.stages import metrics

    original = metrics.MetricsLog.log

    def log_then_crash(self, logged_step, values):
        out = original(self, logged_step, values)
        if logged_step == step:
            raise RuntimeError(f"simulated crash after step {step}")
        return out

    metrics.MetricsLog.log = log_then_crash


def deepspeed_env(config_file, world: int = 2) -> dict:
    """What `accelerate launch --config_file recipes/deepspeed/accelerate_zero*.yaml --mixed_precision no` sets."""
    return {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config_file),
        "ACCELERATE_MIXED_PRECISION": "no",
        "LOCAL_WORLD_SIZE": str(world),
    }
