"""MPO stage (offline RL): train a policy on MMPR preference pairs with `cascade_rl.algos.mpo_loss` (SPEC §1).

Plan of a run: load the policy → check and measure the pairs (never truncating inside an image; no pixels kept)
→ reference log-probs in one no-grad pass through the prepared policy (its first forward's device, dtype and
autocast, so h = 0 at step 0: train/reference.py), cached beside the run → AdamW + cosine schedule, gradient
accumulation, DDP or DeepSpeed ZeRO-2/3 through accelerate (ZeRO-3 specifics: train/zero3.py) → metrics.jsonl /
trackers → resumable train state → a Hugging Face format checkpoint in `final/`.
Each pair's vision features and shared prompt are computed once for both completions (models/logprobs.py).
Pairs are encoded (images loaded and tiled) per micro-batch, each rank only its own (train/pair_data.py); they come
from a pairs file, an MMPR meta json (InternVL's format: per-dataset roots, tile budgets and repeat_time), or both.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from tqdm import tqdm

from cascade_rl.algos import RunningMean, mean_implicit_reward, mpo_loss
from cascade_rl.config import check_choices, dump_yaml
from cascade_rl.data import DataError
from cascade_rl.models import load_policy, save_policy, tokenizer_of
from cascade_rl.models.logprobs import CHUNK_SIZE
from cascade_rl.models.pairs import pair_token_logps
from cascade_rl.models.parts import merge_lora
from cascade_rl.train.fingerprint import checkpoint_fingerprint
from cascade_rl.train.metrics import MetricsLog
from cascade_rl.train.optim import OptimConfig
from cascade_rl.train.pair_data import PairSource, load_mmpr_pairs, load_pairs
from cascade_rl.train.reference import ReferenceScorer, cached_reference_logps, computed_as, like_policy
from cascade_rl.train.setup import (
    check_launch,
    configure_deepspeed,
    end_run,
    fill_deepspeed_buckets,
    global_order,
    make_accelerator,
    make_optimizer,
    micro_batch,
    prepare_policy,
    start_trackers,
    zero_stage,
)
from cascade_rl.train.state import load_run_state, save_run_state
from cascade_rl.train.zero3 import WHOLE_SEQUENCE, check_zero3_run, gathered_state_dict

# InternVL3.5's released MPO settings (SPEC §1): lr 2e-7, cosine, warmup 0.03, weight decay 0.05, 1 epoch; global
# batch = per_device_batch × grad_accum × processes (InternVL: 1 × … = 256).
MPO_OPTIM = OptimConfig(lr=2e-7, lr_schedule="cosine", warmup_ratio=0.03, weight_decay=0.05, epochs=1)


@dataclass(frozen=True)
class MPOConfig:
    """InternVL3.5's released MPO settings are the defaults (SPEC §1): `optim` MPO_OPTIM, β 0.1, weights
    (0.8, 0.2, 1.0), max 12 tiles. `system_prompt`: the system message of pairs without their own `system_prompt`
    (InternVL trains under its template's default, `data.prompting.INTERNVL_SYSTEM_PROMPT`: the InternVL3.5
    recipes set it).

    pairs: our pairs file (images under `image_root`), with `format_pairs` (the pairs stage's format pairs) trained
    alongside; mmpr_meta: an InternVL MMPR meta json (each dataset with its own root, `max_dynamic_patch` tile
    budget, else `max_tiles`, and `repeat_time`, a fraction drawn with `seed`); one of them or both (the files'
    pairs, then the meta's)."""

    model_path: str = ""
    pairs: str = ""
    format_pairs: str | None = None
    mmpr_meta: str | None = None
    image_root: str | None = None
    out_dir: str = "runs/mpo"
    reference: Literal["precomputed", "live"] = "precomputed"
    reference_path: str | None = None
    beta: float = 0.1
    loss_weights: tuple[float, float, float] = (0.8, 0.2, 1.0)
    optim: OptimConfig = field(default_factory=lambda: MPO_OPTIM)
    max_tiles: int = 12
    system_prompt: str | None = None
    max_length: int = 16384
    on_overlong: Literal["drop", "raise"] = "drop"
    deepspeed: str | None = None  # the DeepSpeed JSON this stage is launched with (None: DDP); see docs/recipes.md
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    lora_rank: int = 0
    lora_alpha: int = 16
    save_steps: int = 0
    seed: int = 0
    log_with: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_choices(self)
        if not self.model_path or not (self.pairs or self.mmpr_meta):
            raise ValueError(
                "model_path and pairs (a pairs file, or mmpr_meta: an MMPR meta json, or both) are required"
            )
        if self.lora_rank and self.freeze_llm:
            raise ValueError("lora_rank > 0 trains adapters inside the LLM; it cannot be combined with freeze_llm")

    @property
    def pair_files(self) -> list[str]:
        """The pairs files trained on, in order: `pairs`, then `format_pairs` (each when set)."""
        return [f for f in (self.pairs, self.format_pairs) if f]


class PairScorer(torch.nn.Module):
    """Wraps the policy so one DDP / DeepSpeed forward scores a micro-batch of pairs (one packed call per pair).

    forward(pairs) → (chosen_logps [B], rejected_logps [B], chosen_token_logps [B, T], chosen_mask [B, T]).
    """

    def __init__(self, model, pad_id: int, chunk_size: int = CHUNK_SIZE, fixed_call_order: bool = False):
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.chunk_size = chunk_size
        self.fixed_call_order = fixed_call_order

    def forward(self, pairs):
        sums, token_rows, mask_rows = [], [], []
        for pair in pairs:
            logps, mask = pair_token_logps(
                self.model,
                pair,
                pad_id=self.pad_id,
                chunk_size=self.chunk_size,
                fixed_call_order=self.fixed_call_order,
            )
            sums.append(logps.sum(-1))
            token_rows.append(logps[0, : len(pair.chosen_ids)])
            mask_rows.append(mask[0, : len(pair.chosen_ids)])
        sums = torch.stack(sums)
        tokens = torch.nn.utils.rnn.pad_sequence(token_rows, batch_first=True)
        masks = torch.nn.utils.rnn.pad_sequence(mask_rows, batch_first=True)
        return sums[:, 0], sums[:, 1], tokens, masks


def load_training_pairs(config: MPOConfig, processor) -> tuple[PairSource, dict]:
    """The pairs of `config.pair_files` then of `config.mmpr_meta` (each when set), read, checked and measured; and
    their load summaries by source ("pairs", "mmpr")."""
    settings = dict(max_length=config.max_length, on_overlong=config.on_overlong, system_prompt=config.system_prompt)
    sources, summaries = [], {}
    if config.pair_files:
        source, summary = load_pairs(
            config.pair_files, processor, image_root=config.image_root, max_tiles=config.max_tiles, **settings
        )
        sources.append(source)
        summaries["pairs"] = vars(summary)
    if config.mmpr_meta:
        source, summary = load_mmpr_pairs(
            config.mmpr_meta, processor, seed=config.seed, max_tiles=config.max_tiles, **settings
        )
        sources.append(source)
        summaries["mmpr"] = vars(summary)
    pairs = sum(sources[1:], sources[0])
    if not pairs:
        files = " and ".join(f for f in (*config.pair_files, config.mmpr_meta) if f)
        raise DataError(f"{files}: no trainable pairs ({summaries}); fix the data or raise max_length")
    return pairs, summaries


def reference_cache(config: MPOConfig, pairs: PairSource, computed: str) -> tuple[Path, dict]:
    """Where the reference log-probs are cached, and the key that must match for the cache to be reused: the
    reference checkpoint, the pairs as they encode, and how the policy's forward runs (`computed_as`)."""
    key = {
        "reference": checkpoint_fingerprint(config.reference_path or config.model_path),
        "pairs": pairs.fingerprint(),
        "n_pairs": len(pairs),
        "computed_as": computed,
    }
    return Path(config.out_dir) / f"reference_logps-{key['reference'][:12]}.pt", key


def reference_scorer(path: str, policy, pad_id: int, accelerator: Accelerator) -> ReferenceScorer:
    """The checkpoint at `path` as a pair scorer that runs as the prepared `policy` does (train/reference.py)."""
    return ReferenceScorer(PairScorer(like_policy(load_policy(path)[0], policy, accelerator), pad_id), accelerator)


def reference_logps(config: MPOConfig, scorer, model, pairs: PairSource, pad_id: int, accelerator) -> torch.Tensor:
    """[N, 2] reference (chosen, rejected) log-prob sums, scored exactly as the policy's first forward: through the
    prepared `scorer` itself before any step (the starting policy), or a `reference_path` model placed and run like
    it; spread over the ranks, cached, read by all."""

    def make_scorer():
        if config.reference_path is None:
            return scorer
        return reference_scorer(config.reference_path, model, pad_id, accelerator)

    cache, key = reference_cache(config, pairs, computed_as(accelerator, model))
    return cached_reference_logps(cache, key, make_scorer, pairs, accelerator)


def run_mpo(config: MPOConfig) -> dict:
    """Train with MPO; resumes from `out_dir/state` when present; writes `out_dir/final` (HF format)."""
    out = Path(config.out_dir)
    optim = config.optim
    accelerator = make_accelerator(optim, config.log_with, config.out_dir)
    check_launch(accelerator, config.deepspeed, "mpo.deepspeed")
    configure_deepspeed(accelerator, optim, zero3=True)
    zero3 = zero_stage(accelerator) == 3  # see train/zero3.py
    torch.manual_seed(config.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, out / "mpo_config.yaml")
    model, processor, trainable = prepare_policy(config)
    pad_id = tokenizer_of(processor).pad_token_id or 0
    pairs, data_summary = load_training_pairs(config, processor)
    if zero3:
        check_zero3_run(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    order = global_order(len(pairs), optim.epochs, config.seed)
    total = len(order) // (optim.per_device_batch * optim.grad_accum * world)
    total = min(total, optim.max_steps) if optim.max_steps else total
    if total < 1:
        raise ValueError(
            f"{len(pairs)} pairs cannot fill one global batch; lower optim.per_device_batch or grad_accum"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(optim, params, total)
    fill_deepspeed_buckets(accelerator, model)
    scorer = PairScorer(model, pad_id, WHOLE_SEQUENCE if zero3 else CHUNK_SIZE, fixed_call_order=zero3)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    # the reference scores as the prepared policy's first forward does (device, dtype, autocast), so h = 0 at step 0
    ref_logps = None
    if config.reference == "precomputed":
        ref_logps = reference_logps(config, scorer, model, pairs, pad_id, accelerator)
    live_ref = None
    if config.reference == "live":
        live_ref = reference_scorer(config.reference_path or config.model_path, model, pad_id, accelerator)
    running = RunningMean()
    start = 0
    resumed = load_run_state(out / "state", accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
    if resumed is not None:
        start, extra = resumed
        running.load_state_dict(extra["delta"])
    start_trackers(accelerator, "cascade_rl_mpo", out, {"lr": optim.lr, "beta": config.beta})
    log = MetricsLog(out / "metrics.jsonl", accelerator)
    step_fn = _make_step(config, scorer, optimizer, scheduler, params, running, ref_logps, live_ref, accelerator)
    bar = tqdm(range(start, total), desc="mpo", unit="step", disable=not accelerator.is_main_process)
    for step in bar:
        metrics = step_fn(pairs, [micro_batch(order, step, m, optim, rank, world) for m in range(optim.grad_accum)])
        bar.set_postfix(loss=f"{log.log(step + 1, metrics)['loss']:.4f}")
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < total:
            _save_state(out, accelerator, model, optimizer, scheduler, step + 1, running)
    accelerator.wait_for_everyone()
    state = gathered_state_dict(accelerator, scorer) if zero3 else None  # every rank takes part
    return _finish(config, accelerator, model, processor, data_summary, trainable, total - start, state)


def _make_step(config, scorer, optimizer, scheduler, params, running, ref_logps, live_ref, accelerator):
    """One optimizer step over `grad_accum` micro-batches; returns the step's metrics (micro-step means).
    ref_logps: the precomputed [N, 2] reference log-probs, or None and `live_ref` (a ReferenceScorer)."""

    def reference(pairs, idx):
        if ref_logps is not None:
            return ref_logps[idx, 0], ref_logps[idx, 1]
        chosen, rejected, _, _ = live_ref(pairs)
        return chosen.float().cpu(), rejected.float().cpu()

    def step(pairs: PairSource, micro_batches):
        started, tokens, sums = time.time(), 0, {}
        for idx in micro_batches:
            batch = [pairs.encode(i) for i in idx]  # images loaded and tiled now, freed after the micro-step
            with accelerator.accumulate(scorer):  # syncs (DDP) or steps (DeepSpeed) on the last micro-step
                chosen, rejected, token_logps, mask = scorer(batch)
                ref_chosen, ref_rejected = (t.to(chosen.device) for t in reference(batch, idx))
                # δ folds this micro-batch in (all-reduced over ranks) before the BCO term uses it, as TRL 0.21 does
                reward = mean_implicit_reward(chosen, rejected, ref_chosen, ref_rejected, beta=config.beta)
                delta = running.update(reward)
                loss, metrics = mpo_loss(
                    chosen,
                    rejected,
                    ref_chosen,
                    ref_rejected,
                    token_logps,
                    mask,
                    delta=delta,
                    beta=config.beta,
                    weights=tuple(config.loss_weights),
                )
                accelerator.backward(loss)  # divided by grad_accum there
            tokens += sum(p.num_tokens for p in batch)
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, 0) + value / len(micro_batches)
        grad_norm = accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = max(time.time() - started, 1e-9)
        return {**sums, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / elapsed}

    return step


def _save_state(out: Path, accelerator, model, optimizer, scheduler, step: int, running) -> None:
    extra = {"delta": running.state_dict()}
    save_run_state(
        out / "state", accelerator, model=model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra
    )


def _finish(config, accelerator, model, processor, data_summary, trainable, steps_run, state=None) -> dict:
    out = Path(config.out_dir)
    summary = {
        **data_summary,
        "trainable_parameters": trainable,
        "steps_run": steps_run,
        "final": str(out / "final"),
    }
    if accelerator.is_main_process:
        save_policy(merge_lora(model), processor, out / "final", state_dict=state)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()  # no rank exits (and gets the launcher to stop the others) before the save
    end_run(accelerator)
    return summary
