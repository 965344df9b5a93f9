"""MPO epoch: cascade_rl's MPO stage against TRL's DPOTrainer with MPO's loss mix, on the same tiny InternVL.

What runs. One tiny InternVL (transformers' native classes; vision : LLM parameters ≈ 1 : 2; 128-px tiles of 64
image tokens each), 256 MMPR-format pairs (``--pairs``) whose images tile into 2, 3 or 4 crops plus InternVL's
thumbnail (3-5 tiles, 192-320 image tokens; prompts are ~90% image tokens, completions 10-40 tokens). Each side
trains one epoch from the same checkpoint, in its own process (this script with ``--side ours`` / ``--side trl``),
the two alternating for ``--rounds`` rounds; the median wall time per side is compared.

- ours: ``run_mpo`` with ``reference="precomputed"``: one no-grad pass over the pairs (vision tower and prompt once
  per pair, the prompt and both completions in one packed row under a block attention mask), then training with the
  same sharing.
- TRL 1.16: ``DPOTrainer`` with ``loss_type=["sigmoid", "bco_pair", "sft"]``, ``loss_weights=[0.8, 0.2, 1.0]``.
  TRL refuses ``precompute_ref_log_probs`` for vision datasets, so its reference model runs live, as it does for
  every vision-language user. It runs on the checkpoint and processor unchanged: no wrapper, no patch. The only
  adaptation is the data format: the prompt is given as text already rendered by the model's chat template (with
  the ``<IMG_CONTEXT>`` placeholder the processor expands) and each completion as ``response + <|im_end|>``, so both
  sides score exactly the same token ids (TRL's conversational format would add a trailing newline token).
- Same for both: fp32 on the CPU, ``torch.set_num_threads(--threads)`` (default 1: on a shared 2-core machine,
  multi-threaded OpenMP kernels slow down erratically when other processes hold a core; one thread per side keeps
  the comparison stable), batch 1 pair × 4 accumulation steps
  (global batch 4), lr 1e-5 with cosine decay and the same warmup steps, weight decay 0.05, grad clip 1.0,
  ``torch.optim.AdamW`` (TRL: ``optim="adamw_torch"``), no gradient checkpointing (TRL turns it on by default; off,
  neither side recomputes activations), the same pair order (ours: ``run_mpo``'s seeded permutation; TRL: the
  dataset stored in that order with ``train_sampling_strategy="sequential"``), nothing truncated.
  Departure: transformers exempts biases and norm weights from weight decay, ``run_mpo`` does not (no effect on
  time or memory).

What is measured.
- Time: from the moment the policy is loaded (pairs not yet read) to the end of the last optimizer step: reading
  and encoding the pairs (ours tiles them up front, TRL builds a ``datasets.Dataset`` and tiles in its collator;
  printed apart), the reference log-probs (ours: the precompute pass; TRL: loading its reference model and running
  it every step), the epoch. Not timed: imports, loading the policy, saving the final checkpoint. Wall time gives
  ``speedup``; the process CPU time over the same window is printed beside it (``cpu_speedup``), since wall time
  on a machine shared with other jobs is noisy.
- Memory: growth of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` once the policy and
  the data are loaded; ``ru_maxrss`` where that is not allowed) above its RSS at that moment, so imports and the
  resident data do not hide the difference. ``peak_mem_ratio`` = ours / TRL.
- First-step losses: ours from ``metrics.jsonl`` (step 1, mean over its 4 micro-batches); TRL's terms from its own
  ``compute_loss``, called once per loss type on the same 4 pairs at the initial weights (after the timed run, with
  the policy reset to the checkpoint). The sigmoid (DPO) and sft (LM) terms must agree within ``LOSS_TOLERANCE``;
  at step 1 the policy is the reference, so DPO = ln 2 and BCO = 2 ln 2 on both sides (δ = 0 then); from step 2 on
  our BCO uses the running reward mean δ that current TRL dropped.

Analytic ceiling (``analytic_ceiling``): the work of one pair in forward MACs, reported in "LLM token-forwards"
(one token through every linear layer of the LLM). Backward = 2 × forward on the trained policy (vision tower
included: it is trainable); the reference is forward only. Counted: LLM linear layers per token, causal attention
(2 · heads · head_dim MACs per layer per query-key pair), the LM head on scored positions, and per tile the vision
tower (patch embedding, encoder linear layers, attention over its 257 tokens) and the projector.
  TRL  = (3 + 1) · 2 · [V(tiles) + S(P + C)]                    policy fwd+bwd and reference fwd, each on the two
                                                                full rows (padded to C = max(C_chosen, C_rejected))
  ours = (3 + 1) · [V(tiles) + S(P) + 2 · S(C | P)]             policy fwd+bwd and the reference pass, each on the
                                                                vision tower and prompt once and two completions
  ceiling = Σ TRL / Σ ours over the pairs; → 2 as P ≫ C. Outside the model: optimizer steps, data handling, each
  model call's fixed overhead (ours makes one call per pair; its dense block mask computes and discards the scores
  between the two completions),
  and the per-MAC efficiency of differently shaped matrix products, which favours TRL's larger batches.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mpo_vs_trl.py`` (CPU, offline; about 6 minutes on an idle
machine, 10 on a busy 2-core one; ``--pairs 64`` for a quick look).
The last line is JSON: ``speedup`` (TRL time / ours), ``ceiling``, ``peak_mem_ratio``, times, memory and losses.
Targets from issue 6: speedup ≥ 1.8, peak_mem_ratio ≤ 0.7.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

LR = 1e-5
GRAD_ACCUM = 4
WARMUP_RATIO = 0.03
WEIGHT_DECAY = 0.05
BETA = 0.1
MAX_TILES = 4
LOSS_TOLERANCE = 1e-4  # absolute, on fp32 means of a few hundred token log-probs
# (width, height) → 2, 3, 4 crops of 128 px, plus the thumbnail InternVL adds whenever there is more than one crop.
IMAGE_SIZES = [(256, 128), (384, 128), (256, 256)]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["squares", "circles", "triangles"]
TARGETS = {"speedup": 1.8, "peak_mem_ratio": 0.7}


def tiny_spec():
    """The `internvl3_5_1b_ratio` preset (vision : LLM ≈ 1 : 2) with 128-px tiles: 64 image tokens per tile."""
    from cascade_rl.models import TINY_PRESETS

    return replace(TINY_PRESETS["internvl3_5_1b_ratio"], tile_size=128, patch_size=8, max_tiles=MAX_TILES)


# --------------------------------------------------------------------------------------------------- workload


def shapes_picture(size: tuple[int, int], rng: random.Random):
    """A white picture with a few coloured rectangles (content does not matter for cost; it keeps PNGs realistic)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 9)):
        x, y = rng.randrange(size[0] - 16), rng.randrange(size[1] - 16)
        draw.rectangle([x, y, x + rng.randint(6, 15), y + rng.randint(6, 15)], fill=rng.choice(COLOURS))
    return image


def answer_text(rng: random.Random, colour: str, shape: str, count: int) -> str:
    """A short reasoning-style answer, 10-40 tokens with the tiny tokenizer."""
    steps = [f"There are {rng.randint(0, 9)} {rng.choice(COLOURS)} {shape} on the {rng.choice(['left', 'right'])}."]
    steps += [f"I count the {colour} {shape} in the picture." for _ in range(rng.randint(0, 2))]
    return " ".join(steps) + f" Answer: \\boxed{{{count}}}"


def write_workload(root: Path, n_pairs: int, seed: int = 0) -> dict:
    """Tiny checkpoint, images and an MMPR pairs file under `root`; returns their paths."""
    from cascade_rl.models import build_tiny_internvl, save_policy

    model, processor = build_tiny_internvl(tiny_spec(), seed=seed)
    checkpoint = save_policy(model, processor, root / "checkpoint")
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng, rows = random.Random(seed), []
    for i in range(n_pairs):
        name = f"img{i:04d}.png"
        shapes_picture(IMAGE_SIZES[i % len(IMAGE_SIZES)], rng).save(images / name)
        colour, shape, count = rng.choice(COLOURS), rng.choice(SHAPES), rng.randint(0, 9)
        rows.append(
            {
                "image": name,
                "question": f"<image>\nHow many {colour} {shape} are there in the picture? Think step by step.",
                "chosen": answer_text(rng, colour, shape, count),
                "rejected": answer_text(rng, colour, shape, (count + rng.randint(1, 9)) % 10),
            }
        )
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"checkpoint": str(checkpoint), "pairs": str(pairs), "image_root": str(images)}


def optimizer_steps(n_pairs: int) -> tuple[int, int]:
    """(optimizer steps of the epoch, warmup steps): run_mpo's own arithmetic, given to TRL as well."""
    steps = n_pairs // GRAD_ACCUM
    return steps, math.ceil(WARMUP_RATIO * steps)


# ----------------------------------------------------------------------------------------------------- memory


class PeakMemory:
    """Growth of the peak RSS above the RSS at `start()`, in MiB."""

    def __init__(self):
        self.baseline_mib = 0.0
        self.method = "VmHWM reset at start"

    @staticmethod
    def _status_mib(field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"/proc/self/status has no {field}")

    def start(self) -> None:
        gc.collect()
        self.baseline_mib = self._status_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        except OSError:
            self.method = "ru_maxrss (peak since process start: an upper bound)"

    def peak_growth_mib(self) -> float:
        if self.method.startswith("VmHWM"):
            peak = self._status_mib("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak - self.baseline_mib


# -------------------------------------------------------------------------------------------------- the sides


def run_ours(workload: dict, out_dir: Path, n_pairs: int) -> dict:
    """run_mpo on the workload; the time window and memory baseline are marked by wrapping two of its calls."""
    import cascade_rl.stages.mpo as mpo_stage
    from cascade_rl.train.metrics import read_metrics

    memory, marks = PeakMemory(), {}
    load_pairs, save_policy = mpo_stage.load_pairs, mpo_stage.save_policy

    def load_pairs_marked(*args, **kwargs):
        marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()  # policy loaded; pairs next
        out = load_pairs(*args, **kwargs)
        marks["data_seconds"] = time.perf_counter() - marks["start"]
        memory.start()
        return out

    def save_policy_marked(*args, **kwargs):
        marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()  # last step done; save not timed
        marks["peak_growth_mib"] = memory.peak_growth_mib()
        return save_policy(*args, **kwargs)

    mpo_stage.load_pairs, mpo_stage.save_policy = load_pairs_marked, save_policy_marked
    config = mpo_stage.MPOConfig(
        model_path=workload["checkpoint"],
        pairs=workload["pairs"],
        image_root=workload["image_root"],
        out_dir=str(out_dir),  # a fresh directory: the reference cache is computed, never reused
        reference="precomputed",
        beta=BETA,
        optim=replace(
            mpo_stage.MPO_OPTIM,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            warmup_ratio=WARMUP_RATIO,
            lr_schedule="cosine",
            per_device_batch=1,
            grad_accum=GRAD_ACCUM,
            mixed_precision="no",
        ),
        max_tiles=MAX_TILES,
        seed=0,
    )
    summary = mpo_stage.run_mpo(config)
    if summary["pairs"]["kept"] != n_pairs:
        raise RuntimeError(f"run_mpo kept {summary['pairs']['kept']} of {n_pairs} pairs: {summary['pairs']}")
    rows = read_metrics(out_dir / "metrics.jsonl")
    first = rows[0]
    return {
        "seconds": marks["end"] - marks["start"],
        "cpu_seconds": marks["cpu_end"] - marks["cpu_start"],
        "data_seconds": marks["data_seconds"],
        "peak_growth_mib": marks["peak_growth_mib"],
        "rss_loaded_mib": memory.baseline_mib,
        "memory_method": memory.method,
        "steps": len(rows),
        "first_step": {k: first[k] for k in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta")},
        "last_step": {k: rows[-1][k] for k in ("loss", "dpo_loss", "bco_loss", "lm_loss", "delta")},
    }


def trl_rows(workload: dict) -> list[dict]:
    """The pairs in run_mpo's training order, as TRL's standard (non-conversational) preference rows."""
    from PIL import Image

    from cascade_rl.data import row_from_record
    from cascade_rl.data.reader import iter_raw_records
    from cascade_rl.models import load_internvl_processor
    from cascade_rl.models.chat import render
    from cascade_rl.train.setup import global_order

    processor = load_internvl_processor(workload["checkpoint"])
    eos = processor.tokenizer.eos_token
    records = [record for _, record in iter_raw_records(workload["pairs"])]
    rows = []
    for index in global_order(len(records), epochs=1, seed=0):
        record = records[index]
        messages = row_from_record(record, f"{workload['pairs']}:{index + 1}").to_messages()
        image = Image.open(Path(workload["image_root"]) / record["image"]).convert("RGB")
        rows.append(
            {
                "images": [image],
                "prompt": render(processor, messages, add_generation_prompt=True),
                "chosen": record["chosen"] + eos,
                "rejected": record["rejected"] + eos,
            }
        )
    return rows


def trl_first_step_terms(trainer, checkpoint: str) -> dict:
    """Each MPO term by TRL's own compute_loss on the first optimizer step's pairs, at the initial weights."""
    import torch

    from cascade_rl.models import load_policy

    trainer.model.load_state_dict(load_policy(checkpoint)[0].state_dict())
    saved = trainer.loss_types, trainer.loss_weights
    terms = {}
    with torch.no_grad():
        for loss_type in ("sigmoid", "bco_pair", "sft"):
            trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
            values = []
            for index in range(GRAD_ACCUM):
                batch = trainer._prepare_inputs(trainer.data_collator([dict(trainer.train_dataset[index])]))
                values.append(trainer.compute_loss(trainer.model, batch).item())
            terms[loss_type] = sum(values) / len(values)
    trainer.loss_types, trainer.loss_weights = saved
    return terms


def run_trl(workload: dict, out_dir: Path, n_pairs: int) -> dict:
    """TRL's DPOTrainer with MPO's loss mix on the workload; its reference model is created (and run) by TRL."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from cascade_rl.models import load_policy

    model, processor = load_policy(workload["checkpoint"])  # config._name_or_path = the checkpoint: TRL's reference
    memory = PeakMemory()
    start, cpu_start = time.perf_counter(), time.process_time()  # the policy is loaded; the pairs are read next
    dataset = Dataset.from_list(trl_rows(workload))
    data_seconds = time.perf_counter() - start
    memory.start()
    steps, warmup = optimizer_steps(n_pairs)
    args = DPOConfig(
        output_dir=str(out_dir),
        loss_type=["sigmoid", "bco_pair", "sft"],
        loss_weights=[0.8, 0.2, 1.0],
        beta=BETA,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=warmup,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=1.0,
        optim="adamw_torch",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=GRAD_ACCUM,
        num_train_epochs=1,
        train_sampling_strategy="sequential",
        max_length=None,
        gradient_checkpointing=False,
        precompute_ref_log_probs=False,  # refused for vision datasets by TRL 1.16
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = memory.peak_growth_mib()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    if len(logs) != steps:
        raise RuntimeError(f"TRL ran {len(logs)} optimizer steps, expected {steps}")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "data_seconds": data_seconds,
        "peak_growth_mib": peak,
        "rss_loaded_mib": memory.baseline_mib,
        "memory_method": memory.method,
        "steps": len(logs),
        "gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
        "first_step": {"loss": logs[0]["loss"], **trl_first_step_terms(trainer, workload["checkpoint"])},
    }


def run_side(side: str, workload: dict, out_dir: Path, n_pairs: int, threads: int) -> None:
    """Child process: train one side, print its result as the last stdout line (JSON)."""
    import torch

    torch.set_num_threads(threads)
    result = (run_ours if side == "ours" else run_trl)(workload, out_dir, n_pairs)
    result.update(side=side, threads=torch.get_num_threads())
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------ analytic ceiling


def linear_macs(module) -> int:
    """MACs of one token through every nn.Linear / nn.Conv2d of `module` (weight elements)."""
    import torch

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


def cost_model(model) -> dict:
    """Per-unit forward MACs of the InternVL: LLM token, attention key, LM head position, vision tile."""
    inner, config = model.model, model.config
    text, vision = config.text_config, config.vision_config
    size, patch = (v if isinstance(v, (list, tuple)) else (v, v) for v in (vision.image_size, vision.patch_size))
    patches = (size[0] // patch[0]) * (size[1] // patch[1])
    vit_tokens = patches + 1  # + CLS
    vit_layer_attention = 2 * vision.hidden_size  # QKᵀ and AV per query-key pair
    tile = (
        linear_macs(inner.vision_tower.embeddings) * patches
        + linear_macs(inner.vision_tower.encoder) * vit_tokens
        + vision.num_hidden_layers * vit_layer_attention * vit_tokens**2
        + linear_macs(inner.multi_modal_projector) * config.image_seq_length
    )
    return {
        "llm_token": linear_macs(inner.language_model),
        "attention_pair": text.num_hidden_layers * 2 * text.num_attention_heads * text.head_dim,
        "lm_head": linear_macs(model.lm_head),
        "vision_tile": tile,
    }


def sequence_macs(cost: dict, context: int, n: int) -> int:
    """Forward MACs of `n` tokens appended after `context` tokens (causal attention, no LM head)."""
    keys = n * context + n * (n + 1) // 2
    return n * cost["llm_token"] + keys * cost["attention_pair"]


def analytic_ceiling(model, shapes: list[tuple[int, int, int, int]]) -> dict:
    """shapes: (tiles, P, C_chosen, C_rejected) per pair → work per pair (LLM token-forwards) and the ceiling."""
    cost = cost_model(model)
    trl = ours = 0
    for tiles, prompt, chosen, rejected in shapes:
        width = max(chosen, rejected)
        scored = (chosen + rejected) * cost["lm_head"]
        vision = tiles * cost["vision_tile"]
        trl += (3 + 1) * (2 * (vision + sequence_macs(cost, 0, prompt + width)) + scored)
        shared = vision + sequence_macs(cost, 0, prompt) + 2 * sequence_macs(cost, prompt, width)
        ours += (3 + 1) * (shared + (2 * width + 1) * cost["lm_head"])
    unit = cost["llm_token"] * len(shapes)
    tokens_trl = sum(2 * (p + max(c, r)) for _, p, c, r in shapes)
    tokens_ours = sum(p + 2 * max(c, r) for _, p, c, r in shapes)
    return {
        "ceiling": trl / ours,
        "trl_work_per_pair": trl / unit,
        "ours_work_per_pair": ours / unit,
        "vision_tile_in_token_forwards": cost["vision_tile"] / cost["llm_token"],
        "tokens_only_ceiling": tokens_trl / tokens_ours,
    }


def pair_shapes(workload: dict) -> tuple[object, list[tuple[int, int, int, int]], float]:
    """(model, (tiles, P, C_chosen, C_rejected) per pair, MiB of pixel values one pair holds while it is encoded —
    run_mpo tiles pairs lazily per micro-batch, so this is the largest pair, not the sum)."""
    from cascade_rl.models import load_policy
    from cascade_rl.train.pair_data import load_pairs

    model, processor = load_policy(workload["checkpoint"])
    source, _ = load_pairs(
        workload["pairs"],
        processor,
        image_root=workload["image_root"],
        max_tiles=MAX_TILES,
        max_length=1 << 20,
        on_overlong="raise",
    )
    pairs = [source.encode(i) for i in range(len(source))]
    shapes = [(len(p.pixel_values), len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    pixel_mib = max(p.pixel_values.nbytes for p in pairs) / 2**20
    return model, shapes, pixel_mib


# ------------------------------------------------------------------------------------------------ the driver


def launch(side: str, workload_file: Path, out_dir: Path, args, log_file: Path) -> dict:
    """Run one side in a fresh process (stderr to `log_file`); returns the JSON of its last stdout line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, __file__, "--side", side, "--workload", str(workload_file), "--out", str(out_dir)]
    command += ["--pairs", str(args.pairs), "--threads", str(args.threads)]
    with open(log_file, "w") as log:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"--side {side} failed (exit {proc.returncode}); see {log_file}")
    return json.loads(lines[-1])


def report_losses(ours: dict, trl: dict) -> bool:
    """Print both sides' first-step terms; True when the DPO and LM terms agree within LOSS_TOLERANCE."""
    pairs = {"dpo / sigmoid": ("dpo_loss", "sigmoid"), "lm / sft": ("lm_loss", "sft")}
    print(f"first-step losses (mean over the {GRAD_ACCUM} pairs of step 1, initial weights; tol {LOSS_TOLERANCE}):")
    agree = True
    for label, (ours_key, trl_key) in pairs.items():
        diff = abs(ours[ours_key] - trl[trl_key])
        agree &= diff <= LOSS_TOLERANCE
        ok = "agree" if diff <= LOSS_TOLERANCE else "DIFFER"
        print(f"  {label:14s} ours {ours[ours_key]:.6f}  TRL {trl[trl_key]:.6f}  |Δ| {diff:.2e}  {ok}")
    print(
        f"  {'bco / bco_pair':14s} ours {ours['bco_loss']:.6f}  TRL {trl['bco_pair']:.6f}  "
        f"(δ = {ours['delta']:.3g} at step 1; from step 2 ours shifts by the running δ, TRL 1.x dropped δ)"
    )
    print(f"  total          ours {ours['loss']:.6f}  TRL {trl['loss']:.6f} (TRL's logged step-1 loss)")
    return agree


def describe_workload(shapes, n_pairs: int, threads: int) -> None:
    steps, warmup = optimizer_steps(n_pairs)
    tiles = sorted({s[0] for s in shapes})
    prompt = statistics.mean(s[1] for s in shapes)
    completion = statistics.mean((s[2] + s[3]) / 2 for s in shapes)
    image_share = statistics.mean(s[0] * tiny_spec().tokens_per_tile / s[1] for s in shapes)
    print(
        f"workload: {n_pairs} pairs, tiles per image {tiles}, prompt {prompt:.0f} tokens ({image_share:.0%} image "
        f"tokens), completions {completion:.1f} tokens; {steps} optimizer steps (batch 1 × accumulation "
        f"{GRAD_ACCUM}, warmup {warmup}), lr {LR}, fp32, {threads} threads"
    )


def alternate(root: Path, workload_file: Path, args) -> dict:
    """ours, TRL, ours, TRL, ...: one child process per run; returns each side's list of results."""
    results = {"ours": [], "trl": []}
    for round_index in range(args.rounds):
        for side in ("ours", "trl"):
            result = launch(
                side, workload_file, root / f"{side}-{round_index}", args, root / f"{side}-{round_index}.log"
            )
            results[side].append(result)
            print(
                f"round {round_index + 1} {side:4s}: {result['seconds']:6.1f} s wall ({result['data_seconds']:.1f} s "
                f"reading the pairs), {result['cpu_seconds']:6.1f} s CPU; peak RSS growth "
                f"{result['peak_growth_mib']:6.1f} MiB above {result['rss_loaded_mib']:.0f} MiB"
            )
    return results


def summarize(results: dict, ceiling: dict, args) -> dict:
    def median(key: str) -> dict:
        return {side: statistics.median(r[key] for r in runs) for side, runs in results.items()}

    wall, cpu, peak = median("seconds"), median("cpu_seconds"), median("peak_growth_mib")
    speedup, cpu_speedup, mem_ratio = wall["trl"] / wall["ours"], cpu["trl"] / cpu["ours"], peak["ours"] / peak["trl"]
    ours, trl = results["ours"][0], results["trl"][0]
    losses_agree = report_losses(ours["first_step"], trl["first_step"])
    print(
        f"analytic ceiling: TRL {ceiling['trl_work_per_pair']:.0f} vs ours {ceiling['ours_work_per_pair']:.0f} "
        f"LLM token-forwards per pair (one vision tile = {ceiling['vision_tile_in_token_forwards']:.0f}) → "
        f"{ceiling['ceiling']:.2f}× (token counts alone: {ceiling['tokens_only_ceiling']:.2f}×)"
    )
    print(
        f"median wall time: ours {wall['ours']:.1f} s, TRL {wall['trl']:.1f} s → speedup {speedup:.2f}× "
        f"(target ≥ {TARGETS['speedup']}); CPU time: ours {cpu['ours']:.1f} s, TRL {cpu['trl']:.1f} s → "
        f"{cpu_speedup:.2f}×"
    )
    print(
        f"median peak RSS growth: ours {peak['ours']:.1f} MiB, TRL {peak['trl']:.1f} MiB → ratio {mem_ratio:.2f} "
        f"(target ≤ {TARGETS['peak_mem_ratio']}; {ours['memory_method']})"
    )
    return {
        "speedup": round(speedup, 3),
        "ceiling": round(ceiling["ceiling"], 3),
        "peak_mem_ratio": round(mem_ratio, 3),
        "cpu_speedup": round(cpu_speedup, 3),
        "ours_seconds": [round(r["seconds"], 2) for r in results["ours"]],
        "trl_seconds": [round(r["seconds"], 2) for r in results["trl"]],
        "ours_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results["ours"]],
        "trl_cpu_seconds": [round(r["cpu_seconds"], 2) for r in results["trl"]],
        "ours_peak_growth_mib": [round(r["peak_growth_mib"], 1) for r in results["ours"]],
        "trl_peak_growth_mib": [round(r["peak_growth_mib"], 1) for r in results["trl"]],
        "ours_rss_loaded_mib": round(ours["rss_loaded_mib"], 1),
        "trl_rss_loaded_mib": round(trl["rss_loaded_mib"], 1),
        "first_step_ours": ours["first_step"],
        "first_step_trl": trl["first_step"],
        "last_step_ours": ours["last_step"],
        "losses_agree": losses_agree,
        "trl_gradient_checkpointing": trl["gradient_checkpointing"],
        "pairs": args.pairs,
        "steps": ours["steps"],
        "rounds": args.rounds,
        "threads": args.threads,
        "targets_met": speedup >= TARGETS["speedup"] and mem_ratio <= TARGETS["peak_mem_ratio"] and losses_agree,
    }


def drive(args) -> None:
    """Build the workload, print the ceiling, alternate the two sides, print the comparison; JSON last."""
    started = time.time()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mpo_vs_trl-"))
    root.mkdir(parents=True, exist_ok=True)
    workload = write_workload(root, args.pairs)
    workload_file = root / "workload.json"
    workload_file.write_text(json.dumps(workload))
    model, shapes, pixel_mib = pair_shapes(workload)
    ceiling = analytic_ceiling(model, shapes)
    del model
    describe_workload(shapes, args.pairs, args.threads)
    results = alternate(root, workload_file, args)
    summary = summarize(results, ceiling, args)
    print(f"both sides tile images per batch; the largest pair holds {pixel_mib:.1f} MiB of float32 pixel values")
    summary["largest_pair_pixel_mib"] = round(pixel_mib, 1)
    summary["total_seconds"] = round(time.time() - started, 1)
    kept = args.workdir or args.keep
    print(f"total {summary['total_seconds']:.0f} s; logs and runs {f'in {root}' if kept else 'removed'}")
    if not kept:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256, help="number of preference pairs (one epoch over them)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (ours, TRL); medians are compared")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both sides")
    parser.add_argument("--workdir", help="keep checkpoint, data, runs and logs here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < GRAD_ACCUM or args.pairs % GRAD_ACCUM:
        parser.error(f"--pairs must be a positive multiple of {GRAD_ACCUM} (whole optimizer steps on both sides)")
    if args.side:
        run_side(args.side, json.loads(Path(args.workload).read_text()), Path(args.out), args.pairs, args.threads)
    else:
        drive(args)


if __name__ == "__main__":
    main()
