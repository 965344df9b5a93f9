"""GSPO training side of one step: cascade_rl's GSPO stage against TRL's GRPOTrainer in GSPO mode, same rollouts.

What runs. One tiny InternVL (transformers' native classes, ``internvl3_5_1b_ratio`` sizes: vision : LLM parameters
≈ 1 : 2) with 128-px tiles of 64 image tokens; ``--prompts`` prompts, each one image tiling into 3, 4 or 5 tiles
(crops + thumbnail: 192-320 image tokens, 87-92% of the prompt); G = ``--group`` fixed completions per prompt (random
ordinary token ids, ``--min-len``..``--max-len`` tokens, ending in ``<|im_end|>``) with fixed rewards in [0, 1]. The
rollouts are given: nothing is generated. Each side runs in its own process (``--side ours|trl``), the order
alternating over ``--rounds`` rounds; each run trains ``--warmup`` + 1 rollout batches on the same rollouts from the
same checkpoint and times the last one (first calls pay one-time allocator and kernel set-up); medians are compared.

Same on both sides: fp32 on the CPU, ``torch.set_num_threads(--threads)`` (default 1: on the shared 2-core machine
this was written on, two OpenMP threads stall at every operator's barrier whenever another process holds a core; our
step took 7.2 s with 2 threads against 1.15 s with 1, same fixture, same minute); vision tower frozen (requires_grad
off), projector and LLM trained; AdamW (torch) lr 1e-6 constant, weight decay 0, grad clip 1.0; clip range 3e-4 /
4e-4 (the GSPO paper's); sequence-level ratio, mean over sequences of the token-mean; no reference model, no KL; one
pass over the rollout batch (TRL ``num_iterations=1``) in mini-batches of ``--mini-batch`` prompts × G rows per
optimizer step and G rows per forward (TRL ``per_device_train_batch_size=G``, ``gradient_accumulation_steps=
mini_batch``, ``steps_per_generation=prompts``: old log-probs are needed because a rollout batch feeds several
optimizer steps); advantages (r - mean) / (std + 1e-4), unbiased std per group (TRL's fixed ε; ours
``group_advantages(eps=1e-4)``, which defaults to 1e-6); no activation checkpointing (TRL's default turns it on).

What is timed (wall clock, and the process's CPU time beside it).
- ours: the real ``GSPOTrainer`` (its engine a no-op, its reward runner closed unused) on the stage's own functions:
  ``make_group`` per prompt (chat encoding and tiling, the frozen vision tower once per prompt, cached),
  ``group_advantages``, ``compute_old_logps`` (no grad; projector, prompt and its keys/values once per group, the G
  completions scored after the cached prompt), ``GSPOTrainer.update`` (its mini-batch loop: per group one
  shared-prompt forward, ``gspo_loss``, backward; then clip, AdamW, scheduler).
- TRL 1.16: its own ``Trainer.train`` loop. Generation is replaced through TRL's ``rollout_func`` hook, which returns
  the fixed completion ids and the prompt ids (TRL's own tokenisation of the prompts is checked equal to ours); a
  reward function looks the fixed rewards up. Timed: the sum over optimizer steps of ``on_step_begin`` →
  ``on_step_end`` (callbacks), i.e. ``_generate_and_score_completions`` (the processor on the images of all P × G
  rows, rewards, advantages, old log-probs through ``_get_per_token_logps_and_entropies`` under no_grad), the
  shuffle and split, per micro-batch ``compute_loss`` + backward, then clip, AdamW, scheduler. Not timed: the
  dataloader fetch between steps, logging, set-up. The parts printed for TRL come from wrapping (not changing) two
  of its methods.

Same math (checked, printed, tolerances below): TRL's prompt token ids equal ours; the advantages are equal; the old
per-token log-probs of every completion agree (ours: shared prompt + KV cache; TRL: full padded rows); the first
mini-batch, at the initial weights, gives the same loss and gradient norm: ours from ``GSPOTrainer``'s first
mini-batch, TRL's ``compute_loss`` + backward on the same groups (one micro-batch each). At ratio 1 the loss is
-mean(Â) over whole groups, 0 up to rounding on both sides, so the gradient norm (every token's log-prob gradient,
the advantages and the aggregation) and the log-probs carry the check.

Analytic floor and ceiling (``_gspo_common.step_macs``): forward multiply-accumulates of one step, backward = 2 ×
forward wherever the gradient flows (projector, LLM, LM head), the frozen vision tower forward only. Counted: LLM
linear layers per token, causal attention (2 · heads · head_dim per layer per query-key pair), the LM head on scored
positions, per tile the vision tower (patch embedding, encoder, attention over its 257 tokens) and the projector.
  ours = Σ_groups V + Proj + 4 · [Proj + L(P) + G · L(C_group | P)]   vision tower (+ projector) once for the
                                                                       cache; old pass + fwd/bwd, the prompt once
                                                                       and G completions padded to the group's longest
  TRL  = Σ_rows   2 · V + 4 · [Proj + L(P_max + C_max)]                per row: old pass + fwd/bwd, each with the
                                                                       vision tower, padded as TRL pads its batch
  floor = ours (GMAC), ceiling = TRL / ours; ``ceiling_unpadded`` without any padding. Image processing, optimizer,
  log-softmax and Python overhead are outside the count.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gspo_vs_trl.py`` (CPU, offline, about 3 minutes). The last line
is JSON: ``speedup`` (TRL wall time / ours; ``speedup_cpu_time`` from process CPU time, steadier on a shared machine),
``floor`` (GMAC), ``ceiling``, times, checks. Target (issue 7): speedup ≥ 3. The measured speedup can exceed
``ceiling_unpadded``: TRL pays for the padding of its rows, which ``ceiling`` counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gspo_common import CostModel, read_rollouts, step_macs, write_fixture  # noqa: E402

LR = 1e-6
CLIP_LOW, CLIP_HIGH = 3e-4, 4e-4
ADV_EPS = 1e-4  # TRL's fixed ε in (r - mean) / (std + ε)
LOSS_TOL = 1e-6  # absolute, first mini-batch loss
GRAD_TOL = 1e-3  # relative, first mini-batch gradient norm (fp32 sums over ~2M parameters, two batchings)
LOGP_TOL = 1e-4  # absolute, per token, old log-probs (shared prompt + KV cache vs full padded rows, fp32)
ADV_TOL = 1e-6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per rollout batch (step)")
    parser.add_argument("--mini-batch", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--group", type=int, default=8, help="G, rollouts per prompt")
    parser.add_argument("--min-len", type=int, default=32, help="shortest completion, tokens")
    parser.add_argument("--max-len", type=int, default=64, help="longest completion, tokens")
    parser.add_argument("--max-tiles", type=int, default=4, help="crops per image (plus a thumbnail)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollout batches before the timed one")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing both sides once")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on both sides (see docstring)")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--check-prompts", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prompts % args.mini_batch or args.mini_batch >= args.prompts:
        parser.error("--mini-batch must divide --prompts and be smaller: several optimizer steps per rollout batch")
    return args


class Clock:
    """Wall and process CPU seconds since construction."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# ----------------------------------------------------------------------------------------------------- ours


def run_ours(args, root: Path) -> dict:
    """`--warmup` + 1 steps of make_group → compute_old_logps → GSPOTrainer.update; the last step timed."""
    from dataclasses import replace

    from cascade_rl.data import row_to_request
    from cascade_rl.rollout import Rollout
    from cascade_rl.stages.gspo import GSPO_OPTIM, GSPO_SAMPLING, GSPOConfig, GSPOTrainer

    config = GSPOConfig(
        model_path=str(root / "checkpoint"),
        prompts=str(root / "prompts.jsonl"),
        image_root=str(root / "images"),
        out_dir=str(root / "ours_run"),
        sampling=replace(GSPO_SAMPLING, n=args.group),
        prompts_per_step=args.prompts,
        mini_batch_prompts=args.mini_batch,
        optim=replace(GSPO_OPTIM, lr=LR, weight_decay=0.0),
        clip_low=CLIP_LOW,
        clip_high=CLIP_HIGH,
        max_tiles=args.max_tiles,
        freeze_vision=True,
    )
    trainer = GSPOTrainer(config, engine=_NoEngine())
    trainer.runner.close()  # rewards are fixed: the reward workers are never used
    fixture = read_rollouts(root)
    requests = [row_to_request(row, config.image_root) for row in trainer.rows]
    rollouts = {
        r.prompt_id: [
            Rollout(r.prompt_id, k, "", ids, [0.0] * len(ids), "stop")
            for k, ids in enumerate(fixture[r.prompt_id]["completions"])
        ]
        for r in requests
    }
    batches, original = [], trainer._mini_batch

    def recorded(batch):  # the stage's own mini-batch step; its metrics are kept for the cross-check
        metrics = original(batch)
        batches.append({"prompts": [g.prompt_id for g in batch], **metrics})
        return metrics

    trainer._mini_batch = recorded
    steps = [_ours_step(trainer, requests, rollouts, fixture, step) for step in range(args.warmup + 1)]
    first, timing = steps[0][0], steps[-1][1]  # the checks use step 0 (initial weights); the last step is timed
    return {
        **timing,
        "first_batch": batches[0],
        "old_logps": {g.prompt_id: [row[m].tolist() for row, m in zip(g.old_logps, g.mask)] for g in first},
        "advantages": {g.prompt_id: g.advantages.tolist() for g in first},
        "shapes": [
            {
                "prompt": len(g.prompt.input_ids),
                "tiles": len(g.prompt.pixel_values),
                "completions": [len(c) for c in g.completions],
            }
            for g in first
        ],
        "config": trainer.model.config.to_json_string(),
    }


def _ours_step(trainer, requests, rollouts, fixture, step: int) -> tuple[list, dict]:
    """One timed step on the stage's functions; returns the groups and {seconds, cpu_seconds, parts}."""
    import torch

    from cascade_rl.algos import group_advantages
    from cascade_rl.train.groups import cache_vision, compute_old_logps, make_group

    c, clock = trainer.config, Clock()
    groups = [
        make_group(
            trainer.processor,
            request,
            rollouts[request.prompt_id],
            fixture[request.prompt_id]["rewards"],
            max_tiles=c.max_tiles,
        )
        for request in requests
    ]
    if c.freeze_vision:
        cache_vision(trainer.scorer, groups)
    advantages = group_advantages(torch.cat([g.rewards for g in groups]), c.sampling.n, eps=ADV_EPS)
    for group, adv in zip(groups, advantages.view(len(groups), c.sampling.n)):
        group.advantages = adv
    prepared, _ = clock.lap()
    compute_old_logps(trainer.scorer, groups, **trainer.scoring)
    old_done, _ = clock.lap()
    trainer.update(groups, step)
    wall, cpu = clock.lap()
    parts = {"prepare": prepared, "old_logps": old_done - prepared, "update": wall - old_done}
    return groups, {"seconds": wall, "cpu_seconds": cpu, "parts": parts}


class _NoEngine:
    """Nothing is generated: the rollouts are given."""

    def update_weights(self, model) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------------ TRL


def run_trl(args, root: Path) -> dict:
    """TRL's own training loop on the same rollouts, injected through its `rollout_func` hook."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from cascade_rl.data import read_prompts, row_to_request
    from cascade_rl.models import encode_prompt, load_policy

    model, processor = load_policy(root / "checkpoint")
    model.model.vision_tower.requires_grad_(False)
    fixture = read_rollouts(root)
    rows, _ = read_prompts(root / "prompts.jsonl", root / "images")
    requests = [row_to_request(row, root / "images") for row in rows]
    by_text = {r.messages[-1]["content"][-1]["text"]: r.prompt_id for r in requests}
    prompt_ids = {
        r.prompt_id: encode_prompt(processor, r.messages, r.images, max_tiles=args.max_tiles).input_ids.tolist()
        for r in requests
    }
    reward_of = {tuple(ids): reward for f in fixture.values() for ids, reward in zip(f["completions"], f["rewards"])}
    rows_seen = []  # (prompt id, rollout index) of each row of each generation batch, in TRL's order

    def fixed_rollouts(prompts, trainer):
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for messages in prompts:
            pid = by_text[messages[-1]["content"][-1]["text"]]
            k = sum(seen == pid for seen, _ in rows_seen) % args.group
            rows_seen.append((pid, k))
            ids = fixture[pid]["completions"][k]
            out["prompt_ids"].append(prompt_ids[pid])
            out["completion_ids"].append(ids)
            out["logprobs"].append([0.0] * len(ids))
        return out

    def fixed_reward(completions, completion_ids, **columns):
        return [reward_of[tuple(ids)] for ids in completion_ids]

    steps_per_batch = args.prompts // args.mini_batch
    config = GRPOConfig(
        output_dir=str(root / "trl_run"),
        per_device_train_batch_size=args.group,
        gradient_accumulation_steps=args.mini_batch,
        steps_per_generation=args.prompts,
        num_generations=args.group,
        num_iterations=1,
        max_steps=(args.warmup + 1) * steps_per_batch,
        importance_sampling_level="sequence",
        loss_type="grpo",
        beta=0.0,
        epsilon=CLIP_LOW,
        epsilon_high=CLIP_HIGH,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_completion_length=args.max_len,
        activation_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=fixed_reward,
        args=config,
        train_dataset=Dataset.from_list([{"prompt": r.messages, "images": r.images} for r in requests]),
        processing_class=processor,
        callbacks=[timer],
        rollout_func=fixed_rollouts,
    )
    trl_ids, _, _ = trainer._tokenize_prompts([_with_images(r) for r in requests])
    same_prompts = all(list(a) == prompt_ids[r.prompt_id] for a, r in zip(trl_ids, requests))
    events, stash = _instrument(trainer)
    trainer.train()
    timed = timer.steps[-steps_per_batch:]
    start, end = timed[0][0], timed[-1][1]
    parts = {}
    for name, at, seconds in events:
        if start <= at <= end:
            parts[name] = parts.get(name, 0.0) + seconds
    batch, first_rows = stash["batch"], rows_seen[: args.prompts * args.group]
    out = {
        "seconds": sum(s[2] for s in timed),
        "cpu_seconds": sum(s[3] for s in timed),
        "parts": parts,
        "same_prompt_ids": same_prompts,
        "optimizer_steps": trainer.state.global_step,
        "old_logps": {},
        "advantages": {},
    }
    for row, (pid, k) in enumerate(first_rows):
        mask = batch["completion_mask"][row].bool()
        out["old_logps"].setdefault(pid, {})[k] = batch["old_per_token_logps"][row][mask].tolist()
        out["advantages"].setdefault(pid, {})[k] = float(batch["advantages"][row])
    if args.check_prompts:
        out["first_batch"] = _first_batch(trainer, model, root, batch, first_rows, args.check_prompts.split(","))
    return out


def _with_images(request) -> list[dict]:
    from trl.data_utils import prepare_multimodal_messages

    return prepare_multimodal_messages(request.messages, images=request.images)


class StepTimer(TrainerCallback):
    """Per optimizer step: (start, end, wall seconds, CPU seconds) from its first micro-batch to its optimizer step."""

    def __init__(self):
        self.steps, self.clock = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock = Clock()

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = self.clock.lap()
        self.steps.append((self.clock.wall, self.clock.wall + wall, wall, cpu))


def _instrument(trainer) -> tuple[list, dict]:
    """Wrap (not change) two TRL methods: time its model passes; keep the first generation batch for the checks."""
    import torch

    events, stash = [], {}
    logps, prepare = trainer._get_per_token_logps_and_entropies, trainer._generate_and_score_completions

    def timed_logps(*a, **kw):
        started = time.perf_counter()
        result = logps(*a, **kw)
        name = "loss_forward" if torch.is_grad_enabled() else "old_logps"
        events.append((name, started, time.perf_counter() - started))
        return result

    def kept_batch(*a, **kw):
        started = time.perf_counter()
        batch = prepare(*a, **kw)
        events.append(("prepare_batch (incl. old_logps)", started, time.perf_counter() - started))
        stash.setdefault("batch", batch)
        return batch

    trainer._get_per_token_logps_and_entropies = timed_logps
    trainer._generate_and_score_completions = kept_batch
    return events, stash


def _first_batch(trainer, model, root: Path, batch: dict, rows_seen: list, prompts: list[str]) -> dict:
    """TRL's compute_loss + backward on our first mini-batch's groups (one micro-batch each), initial weights."""
    import torch
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    from cascade_rl.models import load_policy

    model.load_state_dict(load_policy(root / "checkpoint")[0].state_dict())
    model.zero_grad(set_to_none=True)
    model.train()
    trainer.current_gradient_accumulation_steps = len(prompts)
    split, n, loss = split_pixel_values_by_grid(batch), len(rows_seen), 0.0
    for pid in prompts:
        rows = [i for i, (seen, _) in enumerate(rows_seen) if seen == pid]
        micro = {}
        for key, value in split.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == n:
                micro[key] = value[rows]
            elif isinstance(value, list) and len(value) == n:
                micro[key] = [value[i] for i in rows]
            else:
                micro[key] = value
        part = trainer.compute_loss(model, unsplit_pixel_values_by_grid(micro))
        part.backward()
        loss += float(part.detach())
    params = [p for p in model.parameters() if p.requires_grad]
    return {"prompts": prompts, "loss": loss, "grad": float(torch.nn.utils.clip_grad_norm_(params, 1.0))}


# ---------------------------------------------------------------------------------------------------- driver


def run_side(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    result = run_ours(args, root) if args.side == "ours" else run_trl(args, root)
    result["threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(result))


def spawn(args, side: str, root: Path, check_prompts: list[str] | None) -> dict:
    out = root / f"{side}.json"
    command = [sys.executable, __file__, "--side", side, "--root", str(root), "--out", str(out)]
    for flag in ("prompts", "mini_batch", "group", "min_len", "max_len", "max_tiles", "warmup", "threads"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if check_prompts:
        command += ["--check-prompts", ",".join(check_prompts)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"--side {side} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    args = parse_args()
    if args.side:
        return run_side(args)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gspo_vs_trl_") as tmp:
        root = Path(tmp)
        write_fixture(
            root,
            prompts=args.prompts,
            group=args.group,
            min_len=args.min_len,
            max_len=args.max_len,
            max_tiles=args.max_tiles,
        )
        runs = {"ours": [], "trl": []}
        for round_index in range(args.rounds):
            for side in ["ours", "trl"] if round_index % 2 == 0 else ["trl", "ours"]:
                check = runs["ours"][0]["first_batch"]["prompts"] if side == "trl" and not runs["trl"] else None
                runs[side].append(spawn(args, side, root, check))
                run = runs[side][-1]
                print(f"round {round_index + 1} {side:4s}: {run['seconds']:.2f} s ({run['cpu_seconds']:.2f} s CPU)")
    report(args, runs, time.perf_counter() - wall)


def compare(ours: dict, trl: dict) -> dict:
    """The same-math checks: prompt ids, advantages, old log-probs, first mini-batch loss and gradient norm."""
    logp_gap = max(
        abs(a - b)
        for pid, rows in ours["old_logps"].items()
        for k, row in enumerate(rows)
        for a, b in zip(row, trl["old_logps"][pid][str(k)], strict=True)
    )
    adv_gap = max(
        abs(a - trl["advantages"][pid][str(k)]) for pid, adv in ours["advantages"].items() for k, a in enumerate(adv)
    )
    first_ours, first_trl = {**ours["first_batch"], "grad": ours["first_batch"]["grad_norm"]}, trl["first_batch"]
    grad_rel = abs(first_ours["grad"] - first_trl["grad"]) / max(abs(first_trl["grad"]), 1e-12)
    checks = {
        "same_prompt_ids": trl["same_prompt_ids"],
        "old_logp_max_gap": logp_gap,
        "advantage_max_gap": adv_gap,
        "first_loss_ours": first_ours["loss"],
        "first_loss_trl": first_trl["loss"],
        "first_grad_norm_ours": first_ours["grad"],
        "first_grad_norm_trl": first_trl["grad"],
        "first_grad_norm_rel_gap": grad_rel,
    }
    checks["checks_agree"] = bool(
        trl["same_prompt_ids"]
        and logp_gap <= LOGP_TOL
        and adv_gap <= ADV_TOL
        and abs(first_ours["loss"] - first_trl["loss"]) <= LOSS_TOL
        and grad_rel <= GRAD_TOL
    )
    return checks


def report(args, runs: dict, wall: float) -> None:
    from transformers import InternVLConfig

    ours, trl = runs["ours"][0], runs["trl"][0]
    t_ours, t_trl = (statistics.median(r["seconds"] for r in runs[s]) for s in ("ours", "trl"))
    c_ours, c_trl = (statistics.median(r["cpu_seconds"] for r in runs[s]) for s in ("ours", "trl"))
    cost = CostModel(InternVLConfig.from_dict(json.loads(ours["config"])))
    floor, trl_work = step_macs(cost, ours["shapes"], padded=True)
    floor_unpadded, trl_unpadded = step_macs(cost, ours["shapes"], padded=False)
    checks = compare(ours, trl)
    print(f"ours: {t_ours:.2f} s wall, {c_ours:.2f} s CPU (medians of {len(runs['ours'])}); run 1: {_fmt(ours)}")
    print(f"TRL:  {t_trl:.2f} s wall, {c_trl:.2f} s CPU (medians of {len(runs['trl'])}); run 1: {_fmt(trl)}")
    print(
        f"speedup (TRL / ours): {t_trl / t_ours:.2f}x wall, {c_trl / c_ours:.2f}x CPU; analytic work per step: ours "
        f"{floor / 1e9:.1f} GMAC (floor: vision and prompt once per group), TRL {trl_work / 1e9:.1f} GMAC (per "
        f"completion, padded as run) → ceiling {trl_work / floor:.2f}x (unpadded {trl_unpadded / floor_unpadded:.2f}x)"
    )
    print(
        f"same math: prompt ids equal {checks['same_prompt_ids']}; advantages max |gap| "
        f"{checks['advantage_max_gap']:.1e} (tol {ADV_TOL}); old log-probs max |gap| {checks['old_logp_max_gap']:.1e} "
        f"(tol {LOGP_TOL}); first mini-batch loss ours {checks['first_loss_ours']:.2e}, TRL "
        f"{checks['first_loss_trl']:.2e} (tol {LOSS_TOL}); its grad norm ours {checks['first_grad_norm_ours']:.6f}, "
        f"TRL {checks['first_grad_norm_trl']:.6f} (rel gap {checks['first_grad_norm_rel_gap']:.1e}, tol {GRAD_TOL})"
        f" → {'agree' if checks['checks_agree'] else 'DISAGREE'}"
    )
    summary = {
        "speedup": t_trl / t_ours,
        "speedup_cpu_time": c_trl / c_ours,
        "floor": floor / 1e9,
        "ceiling": trl_work / floor,
        "ceiling_unpadded": trl_unpadded / floor_unpadded,
        "trl_gmac": trl_work / 1e9,
        "ours_s": t_ours,
        "trl_s": t_trl,
        "ours_cpu_s": c_ours,
        "trl_cpu_s": c_trl,
        "ours_runs_s": [round(r["seconds"], 3) for r in runs["ours"]],
        "trl_runs_s": [round(r["seconds"], 3) for r in runs["trl"]],
        **checks,
        "prompts": args.prompts,
        "mini_batch": args.mini_batch,
        "group": args.group,
        "threads": ours["threads"],
        "target": 3.0,
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(summary))


def _fmt(run: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in run["parts"].items())


if __name__ == "__main__":
    main()
