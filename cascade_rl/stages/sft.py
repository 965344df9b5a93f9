"""SFT stage: supervised fine-tuning on (image, question, response) rows, the optional warm-up before Cascade RL.

Loss: assistant-only token-mean cross-entropy over the global batch,
    L = Σ_{examples, t : mask_t} −log π(y_t | x, y_<t)  /  N_global,
where mask is `encode_chat`'s loss mask (the reply and its `<|im_end|>`; prompt, image tokens and the template's
trailing `\\n` are not trained) and N_global counts the masked tokens of the whole optimizer step (every
micro-batch on every rank). Normalising by the global count, not per micro-batch, makes batch 1 × accumulation 8
train like batch 8 × accumulation 1 (a long reply weighs by its tokens wherever it lands).

Plan of a run, as in the MPO stage: load the policy → tokenise the rows (an over-long row is dropped and counted,
never truncated inside an image) → AdamW + warmup/cosine schedule, accumulation, DDP through accelerate →
metrics.jsonl / trackers → resumable train state in `out_dir/state` → a Hugging Face checkpoint in `out_dir/final`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from cascade_rl.algos import summed_next_token_nll
from cascade_rl.config import check_choices, dump_yaml
from cascade_rl.data import DataError, load_images, row_from_record
from cascade_rl.data.reader import iter_raw_records
from cascade_rl.models import EncodedChat, collate_chats, encode_chat, save_policy, tokenizer_of
from cascade_rl.models.parts import merge_lora
from cascade_rl.train.lengths import LoadSummary, admit
from cascade_rl.train.metrics import MetricsLog
from cascade_rl.train.optim import OptimConfig
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
)
from cascade_rl.train.state import load_run_state, save_run_state

# Schedule conventions follow InternVL's training scripts (cosine, warmup 0.03, weight decay 0.05, SPEC §1); lr 1e-5
# is a common full-finetune rate for 1–8B models, not a value from SPEC — the tiny demo model needs ~1e-3.
SFT_OPTIM = OptimConfig(lr=1e-5, lr_schedule="cosine", warmup_ratio=0.03, weight_decay=0.05)


@dataclass(frozen=True)
class SFTConfig:
    """SFT settings; `optim` defaults to SFT_OPTIM. `optim.max_steps` > 0 fixes the number of optimizer steps and
    overrides `optim.epochs` (the data is cycled, one seeded permutation per pass), as in transformers' Trainer.
    Global batch = per_device_batch × grad_accum × processes."""

    model_path: str = ""
    data: str = ""
    image_root: str | None = None
    out_dir: str = "runs/sft"
    optim: OptimConfig = field(default_factory=lambda: SFT_OPTIM)
    max_tiles: int = 12
    max_length: int = 16384
    on_overlong: Literal["drop", "raise"] = "drop"
    system_prompt: str | None = None
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
        if not self.model_path or not self.data:
            raise ValueError("model_path and data (a jsonl with image, question, response) are required")
        if self.lora_rank and self.freeze_llm:
            raise ValueError("lora_rank > 0 trains adapters inside the LLM; it cannot be combined with freeze_llm")


class SFTDataSummary(LoadSummary):
    """Counts from loading the SFT rows (see LoadSummary)."""


def load_sft_examples(config: SFTConfig, processor) -> tuple[list[EncodedChat], SFTDataSummary]:
    """Tokenise every row as [system?] user(images + question) → assistant(response). A row longer than max_length
    is dropped and counted (`on_overlong="drop"`) or refused with its line (`"raise"`), never truncated."""
    examples, summary = [], SFTDataSummary()
    for source, record in tqdm(list(iter_raw_records(config.data)), desc="encode sft rows", unit="row"):
        if isinstance(record, DataError):
            raise record
        summary.rows += 1
        row = row_from_record(record, source)
        response = record.get("response")
        if not isinstance(response, str) or not response.strip():
            raise DataError(f"{source}: missing or empty 'response' (the SFT target); add it or drop the row")
        messages = row.to_messages(config.system_prompt) + [{"role": "assistant", "content": response}]
        chat = encode_chat(processor, messages, load_images(row, config.image_root), max_tiles=config.max_tiles)
        limits = {"max_length": config.max_length, "on_overlong": config.on_overlong, "what": "row"}
        if admit(summary, source, len(chat.input_ids), **limits):
            examples.append(chat)
    summary.kept = len(examples)
    return examples, summary


def summed_token_loss(model, batch: dict[str, torch.Tensor], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model on a collated batch; (`summed_next_token_nll` [] with grad, correctly argmax-predicted
    trained tokens [])."""
    device = batch["input_ids"].device
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"].to(device, dtype)
    logits = model(**inputs).logits  # [B, T, V]
    nll, metrics = summed_next_token_nll(logits, batch["input_ids"], batch["loss_mask"])
    return nll, metrics["correct_tokens"]


def trained_tokens(chats: list[EncodedChat]) -> int:
    """Masked tokens the loss sums over (the first token is never a target)."""
    return sum(int(c.loss_mask[1:].sum()) for c in chats)


def run_sft(config: SFTConfig) -> dict:
    """Fine-tune; resumes from `out_dir/state` when present; writes `out_dir/final` (HF format) and summary.json."""
    out = Path(config.out_dir)
    optim = config.optim
    accelerator = make_accelerator(optim, config.log_with, config.out_dir)
    check_launch(accelerator, config.deepspeed, "sft.deepspeed")
    configure_deepspeed(accelerator, optim)
    torch.manual_seed(config.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(config, out / "sft_config.yaml")
    model, processor, trainable = prepare_policy(config)
    pad_id = tokenizer_of(processor).pad_token_id or 0
    examples, data_summary = load_sft_examples(config, processor)
    if not examples:
        raise ValueError(f"{config.data}: no trainable rows ({data_summary})")
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = optim.per_device_batch * optim.grad_accum * world
    total = optim.max_steps or len(examples) * optim.epochs // global_batch
    if total < 1:
        raise ValueError(f"{len(examples)} rows cannot fill one global batch of {global_batch}; lower the batch")
    passes = -(-total * global_batch // len(examples))  # ceil: enough permutations for every step
    order = global_order(len(examples), passes, config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(optim, params, total)
    dtype = model.dtype
    fill_deepspeed_buckets(accelerator, model)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    start = 0
    resumed = load_run_state(out / "state", accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
    if resumed is not None:
        start = resumed[0]
    start_trackers(accelerator, "cascade_rl_sft", out, {"lr": optim.lr, "global_batch": global_batch})
    log = MetricsLog(out / "metrics.jsonl", accelerator)
    bar = tqdm(range(start, total), desc="sft", unit="step", disable=not accelerator.is_main_process)
    last = {}
    for step in bar:
        batches = [micro_batch(order, step, m, optim, r, world) for m in range(optim.grad_accum) for r in range(world)]
        n_global = trained_tokens([examples[i] for idx in batches for i in idx])
        mine = [micro_batch(order, step, m, optim, rank, world) for m in range(optim.grad_accum)]
        metrics = _train_step(
            accelerator, config, wrapped, optimizer, scheduler, params, examples, mine, n_global, dtype, pad_id
        )
        metrics = _global_metrics(accelerator, metrics, n_global)
        last = log.log(step + 1, metrics)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < total:
            save_run_state(
                out / "state",
                accelerator,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                step=step + 1,
                extra={},
            )
    accelerator.wait_for_everyone()
    return _finish(config, accelerator, model, processor, data_summary, trainable, total - start, last)


def _train_step(
    accelerator, config, model, optimizer, scheduler, params, examples, micro_batches, n_global, dtype, pad_id
) -> dict:
    """One optimizer step over this rank's `grad_accum` micro-batches. Each micro-batch's summed NLL is divided by
    the step's global token count and multiplied by the number of processes (DDP averages gradients over ranks),
    so the accumulated gradient is that of the global token mean."""
    started, nll_sum, hits_sum, tokens = time.time(), torch.zeros(()), torch.zeros(()), 0
    for idx in micro_batches:
        chats = [examples[i] for i in idx]
        batch = collate_chats(chats, pad_id, device=accelerator.device, dtype=dtype)
        with accelerator.accumulate(model):  # syncs (DDP) or steps (DeepSpeed) on the last micro-step
            nll, hits = summed_token_loss(model, batch, dtype)
            # backward divides by grad_accum; DDP averages over ranks: undo both, leaving Σ nll / n_global
            accelerator.backward(nll * accelerator.num_processes * len(micro_batches) / n_global)
        nll_sum += nll.detach().cpu()
        hits_sum += hits.cpu()
        tokens += int(batch["attention_mask"].sum())
    grad_norm = accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = max(time.time() - started, 1e-9)
    return {
        "nll_sum": nll_sum,
        "hits": hits_sum,
        "grad_norm": grad_norm,
        "lr": scheduler.get_last_lr()[0],
        "tokens_per_s": tokens / elapsed,
    }


def _global_metrics(accelerator, metrics: dict, n_global: int) -> dict:
    """Sum this step's NLL and hits over ranks: loss = global token-mean NLL, token_accuracy = global hit rate."""
    local = torch.stack([metrics.pop("nll_sum"), metrics.pop("hits")]).to(accelerator.device)
    summed = accelerator.reduce(local, reduction="sum")
    return {
        "loss": summed[0] / n_global,
        "token_accuracy": summed[1] / n_global,
        "trained_tokens": n_global,
        **metrics,
    }


def _finish(config, accelerator, model, processor, data_summary, trainable, steps_run, last) -> dict:
    out = Path(config.out_dir)
    summary = {
        "rows": vars(data_summary),
        "trainable_parameters": trainable,
        "steps_run": steps_run,
        "last_loss": last.get("loss"),
        "final": str(out / "final"),
    }
    if accelerator.is_main_process:
        save_policy(merge_lora(model), processor, out / "final")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()  # no rank exits (and gets the launcher to stop the others) before the save
    end_run(accelerator)
    return summary
