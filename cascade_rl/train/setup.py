"""Pieces every trainer shares: the accelerator, the learning-rate schedule, the data order, the policy."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.state import AcceleratorState
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from cascade_rl.config import ConfigError
from cascade_rl.models import load_policy
from cascade_rl.models.parts import add_lora, freeze_parts
from cascade_rl.train.optim import SCHEDULES, OptimConfig


def make_accelerator(optim: OptimConfig, log_with: list[str] | None = None, out_dir=None) -> Accelerator:
    """CPU (gloo when launched with several processes) or GPU, in `optim.mixed_precision` ("auto": bf16 on GPU,
    fp32 on CPU).
    Under `accelerate launch` with a DeepSpeed config, DeepSpeed runs on the GPUs, or on the CPU over gloo.
    `optim.grad_accum` micro-steps per optimizer step: run each under `accelerator.accumulate(model)` and pass
    `accelerator.backward` the micro-batch loss; it (or DeepSpeed) divides by `grad_accum`, and gradients are
    synchronised (DDP) or the DeepSpeed engine steps on the last micro-step only.
    Trackers named in `log_with` ("tensorboard", "wandb") write under `out_dir/trackers`."""
    mixed_precision = optim.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    project_dir = str(tracker_dir(out_dir)) if log_with and out_dir is not None else None
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"  # set by accelerate launch
    cpu = not torch.cuda.is_available()
    # accelerate keeps one precision per process; `cascade-rl run` runs its stages in one process, each with its own
    # settings. The process group (PartialState) stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=cpu and not deepspeed,  # accelerate takes DeepSpeed only without cpu=True; it is told gloo instead
        mixed_precision=mixed_precision,
        log_with=log_with or None,
        project_dir=project_dir,
        gradient_accumulation_steps=optim.grad_accum,
        kwargs_handlers=[
            # a batch without images leaves a trainable vision tower unused: DDP must not wait for its gradients
            DistributedDataParallelKwargs(find_unused_parameters=True),
            *([InitProcessGroupKwargs(backend="gloo")] if cpu and deepspeed else []),
        ],
    )


def tracker_dir(out_dir) -> Path:
    return Path(out_dir) / "trackers"


def start_trackers(accelerator: Accelerator, project: str, out_dir, config: dict) -> None:
    """Open the accelerator's trackers (main process only): TensorBoard events in `out_dir/trackers/<project>`,
    W&B run files in `out_dir/trackers/wandb` (WANDB_MODE=offline keeps them on this machine for `wandb sync`)."""
    if not accelerator.log_with:
        return
    tracker_dir(out_dir).mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": {"dir": str(tracker_dir(out_dir))}})


def make_optimizer(optim: OptimConfig, params: list[torch.nn.Parameter], total_steps: int):
    """(AdamW(params, optim.lr, optim.weight_decay), its `make_schedule` over `total_steps` optimizer steps)."""
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return optimizer, make_schedule(optim, optimizer, total_steps)


def make_schedule(optim: OptimConfig, optimizer, total_steps: int):
    """Linear warmup over ceil(optim.warmup_ratio · total) steps, then cosine decay to 0 or a constant rate."""
    if optim.lr_schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {optim.lr_schedule!r}; valid: {', '.join(SCHEDULES)}")
    warmup = math.ceil(optim.warmup_ratio * total_steps)
    if optim.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def global_order(n_pairs: int, epochs: int, seed: int) -> list[int]:
    """Pair indices for the whole run: one seeded permutation per epoch, concatenated."""
    order = []
    for epoch in range(epochs):
        order += torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order


def micro_batch(order: list[int], step: int, micro: int, optim: OptimConfig, rank: int, world: int) -> list[int]:
    """Indices for (optimizer step, micro-step, rank): micro-steps are consecutive slices of the global batch
    (per_device_batch × grad_accum × world), each split into `world` consecutive per-rank slices of
    `optim.per_device_batch`."""
    global_batch = optim.per_device_batch * optim.grad_accum * world
    start = step * global_batch + (micro * world + rank) * optim.per_device_batch
    return order[start : start + optim.per_device_batch]


def prepare_policy(config):
    """Load, freeze and (optionally) LoRA-wrap the policy named by a trainer config (model_path, freeze_*,
    lora_*); returns (model in train mode, processor, trainable parameter counts per part)."""
    model, processor = load_policy(config.model_path)
    counts = freeze_parts(model, vision=config.freeze_vision, projector=config.freeze_projector, llm=config.freeze_llm)
    if config.lora_rank:
        model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha)
    return model.train(), processor, counts


def zero_stage(accelerator: Accelerator) -> int:
    """The DeepSpeed ZeRO stage this run trains under; 0 without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return config_zero_stage(plugin.deepspeed_config) if plugin is not None else 0


def config_zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def read_deepspeed_config(path: str, key: str) -> dict:
    """The DeepSpeed JSON a trainer config's `deepspeed:` names (`key`, e.g. "mpo.deepspeed", for the error): `path`
    as given (absolute or from the working directory), else from the source checkout (`recipes/deepspeed/...`)."""
    for candidate in (Path(path), Path(__file__).resolve().parents[2] / path):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"{key}: {candidate} is not valid JSON ({err})") from None
    raise ConfigError(f"{key}: no DeepSpeed config file {path}; name one such as recipes/deepspeed/zero3.json")


def check_launch(accelerator: Accelerator, declared: str | None, key: str) -> None:
    """Refuse a run whose ZeRO stage differs from the one its config declares (`deepspeed:`, which
    `cascade-rl validate` plans memory with); nothing declared: any launch runs."""
    if declared is None:
        return
    expected, running = config_zero_stage(read_deepspeed_config(declared, key)), zero_stage(accelerator)
    if running != expected:
        now = f"ZeRO-{running}" if running else "without DeepSpeed"
        launcher = f"recipes/deepspeed/accelerate_zero{expected}.yaml" if expected in (2, 3) else "ACCELERATE.yaml"
        raise ConfigError(
            f"{key}: {declared} (ZeRO-{expected}), but this run is launched {now}: launch it with `accelerate "
            f"launch --config_file {launcher}` (its deepspeed_config_file: {declared}), or change {key}"
        )


def deepspeed_fields(ds_config: dict, optim: OptimConfig, world: int, *, zero3: bool = False) -> dict:
    """The DeepSpeed config fields a trainer run fixes, checked against `ds_config` (accelerate's resolved dict).

    optim: an MPO / SFT config's `optim` (per_device_batch, grad_accum, max_grad_norm); world: processes; zero3:
    whether the trainer supports ZeRO-3 (MPO does, see train/zero3.py; SFT does not yet: its rows, text-only or with
    images, would make different module calls on different ranks, and ZeRO-3 gathers parameters per module call).
    Returns {train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps, gradient_clipping}; a
    value the DeepSpeed config sets otherwise (not "auto") is refused with both values named.
    """
    if config_zero_stage(ds_config) == 3 and not zero3:
        raise ValueError("this trainer does not support ZeRO-3 yet: use recipes/deepspeed/zero2.json")
    fields = {
        "train_batch_size": optim.per_device_batch * optim.grad_accum * world,
        "train_micro_batch_size_per_gpu": optim.per_device_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.max_grad_norm,
    }
    for key, value in fields.items():
        given = ds_config.get(key, "auto")
        if given not in ("auto", value):
            raise ValueError(
                f"the DeepSpeed config sets {key}={given!r}, the trainer config {value!r}: set it to auto"
            )
    return fields


def configure_deepspeed(accelerator: Accelerator, optim: OptimConfig, *, zero3: bool = False) -> None:
    """Under `accelerate launch` with a DeepSpeed config, write `deepspeed_fields` into it (before `prepare`);
    a no-op otherwise."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        fields = deepspeed_fields(plugin.deepspeed_config, optim, accelerator.num_processes, zero3=zero3)
        plugin.deepspeed_config.update(fields)


def fill_deepspeed_buckets(accelerator: Accelerator, model) -> None:
    """Fill the ZeRO bucket sizes left "auto" from the language model's hidden size h, as transformers' Trainer
    does (reduce h², stage-3 prefetch 0.9 h², stage-3 persistence 10 h); accelerate cannot, since the module it is
    given wraps the policy. A no-op without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = model.config.get_text_config()
    h = max(config.hidden_sizes) if getattr(config, "hidden_sizes", None) else config.hidden_size
    zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
    for key, value in (
        ("reduce_bucket_size", h * h),
        ("stage3_prefetch_bucket_size", int(0.9 * h * h)),
        ("stage3_param_persistence_threshold", 10 * h),
    ):
        if zero.get(key) == "auto":
            zero[key] = value


@contextmanager
def micro_step(accelerator: Accelerator, model, *, last: bool):
    """One forward + backward of an optimizer step whose micro-steps the caller counts (GSPO: the groups of a
    mini-batch, as many as it holds). Yields `backward(loss)`. Without DeepSpeed, DDP synchronises the gradients on
    the `last` micro-step only (`no_sync` before); the caller then clips and steps. Under DeepSpeed the prepared
    engine accumulates, and on the `last` (its boundary, set by hand) reduces, clips and steps the optimizer itself;
    the loss is not divided (the DeepSpeed config keeps gradient_accumulation_steps at 1)."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is None:
        with nullcontext() if last else accelerator.no_sync(model):
            yield lambda loss: loss.backward()
        return
    model.set_gradient_accumulation_boundary(last)
    yield model.backward
    if last:
        model.step()


def end_run(accelerator: Accelerator) -> None:
    """End a trainer's run: finish its trackers, and destroy the process group only when this is one of several
    launched processes (what `end_training` does). A single process leaves the default group to whoever made it: an
    in-process vLLM engine creates one of size 1 and keeps using it after this stage."""
    if accelerator.num_processes > 1:
        accelerator.end_training()
        return
    for tracker in accelerator.trackers:
        tracker.finish()
