"""Entry point of a spawned rank for the DDP tests (importable by child processes: tests/ is on sys.path)."""

import os

import torch

from cascade_rl.stages.mpo import MPOConfig, run_mpo


def mpo_rank_main(
    rank: int, world: int, port: int, config: MPOConfig, env: dict | None = None, crash_after_step: int = 0
) -> None:
    """env: extra variables, e.g. what `accelerate launch` sets for DeepSpeed (`deepspeed_env`);
    crash_after_step: every rank dies right after logging that step (a simulated crash: exit code 3, no clean-up,
    so no rank aborts in a collective's destructor while its peer is already gone)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.update(env or {})
    torch.set_num_threads(1)
    if crash_after_step:
        crash_after(crash_after_step)
    run_mpo(config)
    mark_done()


CRASH_EXIT_CODE = 3


def crash_after(step: int) -> None:
    from cascade_rl.train import metrics

    original = metrics.MetricsLog.log

    def log_then_crash(self, logged_step, values):
        out = original(self, logged_step, values)
        if logged_step == step:
            os._exit(CRASH_EXIT_CODE)
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


def launch(fn, args: tuple, *, nprocs: int = 2, timeout_s: float = 300.0) -> None:
    """Spawn `nprocs` ranks of `fn(rank, *args)` and wait. A rank's exception is re-raised (ProcessRaisedException),
    ranks still running after `timeout_s` (a collective that never completes) are killed and reported, and a rank
    killed by a signal fails the launch unless every rank had finished its work (`mark_done`): DeepSpeed's CPU
    accelerator sometimes aborts a rank in interpreter teardown ("terminate called without an active exception"),
    after the trainer's final barrier, when nothing is left to lose."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=args, nprocs=nprocs, start_method="spawn", join=False)
    markers = [done_marker(pid) for pid in context.pids()]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if context.join(timeout=1.0):
                    return
            except mp.ProcessExitedException as err:
                if err.signal_name and all(marker.exists() for marker in markers):
                    return
                raise
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"ranks of {fn.__name__} still running after {timeout_s:g} s (a hung collective?)")
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


def done_marker(pid: int):
    """The file the rank with process id `pid` writes when its work is done."""
    import tempfile
    from pathlib import Path

    return Path(tempfile.gettempdir()) / f"cascade_rl_rank_done_{pid}"


def mark_done() -> None:
    """Called by a rank whose trainer returned: its work is done and saved."""
    done_marker(os.getpid()).touch()


def gspo_rank_main(
    rank: int, world: int, port: int, config, env: dict | None = None, crash_after_step: int = 0
) -> None:
    """A GSPO rank; env and crash_after_step as in `mpo_rank_main`."""
    from cascade_rl.stages.gspo import run_gspo

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    os.environ.update(env or {})
    torch.set_num_threads(1)
    if crash_after_step:
        crash_after(crash_after_step)
    run_gspo(config)
    mark_done()


def gspo_rank_main_first_push_fails(rank: int, world: int, port: int, config, env: dict | None = None) -> None:
    """A GSPO rank whose first weight push fails on rank 0 before any weight moves (the servers refuse to start the
    update round): the ranks must agree to retry, the others having finished their gathers. Rank 0 writes
    `out_dir/push_failed` when it injects the failure."""
    from pathlib import Path

    from cascade_rl.rollout.vllm_server import FleetClient

    original = FleetClient.start_weight_update

    def fail_first(client):
        marker = Path(config.out_dir) / "push_failed"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("injected\n")
            raise RuntimeError("injected: the servers refused the first update round")
        return original(client)

    FleetClient.start_weight_update = fail_first
    gspo_rank_main(rank, world, port, config, env)
