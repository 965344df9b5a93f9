"""GSPO stage (online RL, SPEC §3): prompts → G rollouts each → rewards → group advantages → GSPO updates.

One step: take `prompts_per_step` prompts at the cursor, sample G rollouts per prompt with the engine, score them
with the RewardRunner, compute group-normalised advantages, compute old log-probs once with the trainer, then run
`ppo_epochs` passes over mini-batches of `mini_batch_prompts` prompts, one optimizer step per mini-batch; finally
push the weights to the engine. No reference model and no KL by default (InternVL3.5); the vision tower is frozen
and run once per prompt. Departures from the released recipe are listed in docs/losses.md and the config below.
Several processes (`accelerate launch`) split each step's prompts (train/ranks.py) and train under DDP or DeepSpeed
ZeRO-2/3 (ZeRO-3 specifics: train/zero3.py).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from cascade_rl.algos import (
    advantage_options,
    check_policy_loss_settings,
    get_advantage_estimator,
    get_policy_loss,
    k3_kl,
    sequence_is_weights,
)
from cascade_rl.config import check_choices, dump_yaml
from cascade_rl.data import read_prompts, row_to_request
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.models import load_policy, save_policy, tokenizer_of
from cascade_rl.models.logprobs import CHUNK_SIZE
from cascade_rl.models.parts import freeze_parts
from cascade_rl.rewards.scoring import CorrectRule, RewardSpec, check_rules, reward_runner, score_rollouts
from cascade_rl.rollout import SamplingConfig, SamplingParams
from cascade_rl.rollout.factory import EngineKind, ServerSettings, check_server_settings, make_engine
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm
from cascade_rl.train.groups import Group, cache_vision, compute_old_logps, make_group
from cascade_rl.train.metrics import MetricsLog
from cascade_rl.train.optim import OptimConfig
from cascade_rl.train.ranks import PolicyCall, all_ranks, check_ranks, combine_ranks, deal_rows, rank_counts
from cascade_rl.train.setup import (
    check_launch,
    configure_deepspeed,
    end_run,
    fill_deepspeed_buckets,
    make_accelerator,
    make_optimizer,
    micro_step,
    start_trackers,
    zero_stage,
)
from cascade_rl.train.state import load_run_state, save_run_state, uses_deepspeed
from cascade_rl.train.zero3 import (
    WHOLE_SEQUENCE,
    check_zero3_gspo,
    gathered_state_dict,
    partitioned_reference,
    unpartitioned_policy,
)

# InternVL3.5's released online recipe (SPEC §3): lr 1e-6 constant, no warmup, AdamW weight decay 0.01, grad clip 1.0.
GSPO_OPTIM = OptimConfig(lr=1e-6, lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.01, max_grad_norm=1.0)
# 16 rollouts per prompt at temperature 1.0, no top-k / top-p filtering; the sampling seed is derived per step.
GSPO_SAMPLING = SamplingConfig(n=16, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=1024)


@dataclass(frozen=True)
class GSPOConfig:
    """Defaults follow InternVL3.5's released online recipe where it is known (SPEC §3): `optim` GSPO_OPTIM,
    `sampling` GSPO_SAMPLING, vision frozen, no KL; sizes are scaled down (released: 512 prompts per step,
    mini-batches of 32). Clip: the GSPO paper's 3e-4 / 4e-4 (the released scripts ran verl's default 0.2 / 0.2).
    Step k samples with seed `seed · 1000003 + k`; `sampling.temperature` is also the trainer's log-prob
    temperature. GSPO batches by prompts (prompts_per_step, mini_batch_prompts): optim.per_device_batch and
    optim.grad_accum stay 1."""

    model_path: str = ""
    prompts: str = ""
    image_root: str | None = None
    out_dir: str = "runs/gspo"
    engine: EngineKind = "hf"
    server: ServerSettings = field(default_factory=ServerSettings)  # engine server / hf-server
    prompts_per_step: int = 8
    mini_batch_prompts: int = 4
    ppo_epochs: int = 1
    optim: OptimConfig = field(default_factory=lambda: GSPO_OPTIM)
    sampling: SamplingConfig = field(default_factory=lambda: GSPO_SAMPLING)
    policy_loss: str = "gspo"
    aggregation: str = "seq-mean-token-mean"
    clip_low: float = 3e-4
    clip_high: float = 4e-4
    advantage: str = "grpo"
    advantage_scale: str = "group"  # "group" (GRPO), "batch" or "none" (Dr.GRPO: r - group mean, no division)
    advantage_eps: float = 1e-6  # added to the std
    max_tiles: int = 12
    engine_batch_size: int = 16
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    deepspeed: str | None = None  # the DeepSpeed JSON this stage is launched with (None: DDP); see docs/recipes.md
    freeze_vision: bool = True
    kl_coef: float = 0.0
    is_correction: Literal["none", "sequence"] = "none"
    is_cap: float = 2.0
    drop_zero_variance: bool = False
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    correct: list[CorrectRule] = field(default_factory=lambda: [CorrectRule("math", 1.0)])
    reward_timeout_s: float = 5.0
    reward_memory_mb: float = 2048.0  # per reward worker, beyond its size at start; past it a sample scores None
    system_prompt: str | None = None
    save_steps: int = 1
    seed: int = 0
    log_with: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_choices(self)
        if not self.model_path or not self.prompts:
            raise ValueError("model_path and prompts are required")
        check_policy_loss_settings(
            self.policy_loss, aggregation=self.aggregation, clip_low=self.clip_low, clip_high=self.clip_high
        )
        advantage_options(self.advantage, scale=self.advantage_scale, eps=self.advantage_eps)
        if self.sampling.n < 2:
            raise ValueError("sampling.n must be at least 2: group advantages need several rollouts per prompt")
        if self.mini_batch_prompts > self.prompts_per_step:
            raise ValueError("mini_batch_prompts cannot exceed prompts_per_step")
        if (self.optim.per_device_batch, self.optim.grad_accum) != (1, 1):
            raise ValueError(
                "GSPO batches by prompts: set prompts_per_step and mini_batch_prompts (one optimizer step per "
                "mini-batch) and leave optim.per_device_batch and optim.grad_accum at 1"
            )
        if self.sampling.seed:
            raise ValueError("GSPO derives step k's sampling seed from seed (seed · 1000003 + k): set seed instead")
        check_server_settings(self.engine, self.server)
        check_rules(self.rewards, self.correct)


class GSPOTrainer:
    """Holds the policy, optimizer, engine and reward runner of one run; `step(k)` runs training step k."""

    def __init__(self, config: GSPOConfig, engine=None):
        self.config = config
        self.out = Path(config.out_dir)
        self.accelerator = make_accelerator(config.optim, config.log_with, config.out_dir)
        check_launch(self.accelerator, config.deepspeed, "gspo.deepspeed")
        configure_deepspeed(self.accelerator, config.optim, zero3=True)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.zero3 = zero_stage(self.accelerator) == 3
        check_ranks(config, self.world)
        if self.zero3:
            check_zero3_gspo(config)
        if engine is None and config.engine == "vllm":
            require_vllm()  # before any work
        torch.manual_seed(config.seed)
        self.model, self.processor = load_policy(config.model_path)  # partitioned as it loads under ZeRO-3
        freeze_parts(self.model, vision=config.freeze_vision)
        self.model.train()
        self.pad_id = tokenizer_of(self.processor).pad_token_id or 0
        # Under DeepSpeed every rank makes the same module calls per group (train/zero3.py), the LM head in one call
        # under ZeRO-3, where each call gathers parameters.
        self.fixed_call_order = uses_deepspeed(self.accelerator)
        self.scoring = dict(
            temperature=config.sampling.temperature,
            pad_id=self.pad_id,
            chunk_size=WHOLE_SEQUENCE if self.zero3 else CHUNK_SIZE,
            fixed_call_order=self.fixed_call_order,
        )
        self.rows, _ = read_prompts(config.prompts, config.image_root, on_error="raise")
        self.order = self._prompt_order()
        per_step = config.prompts_per_step * config.ppo_epochs // config.mini_batch_prompts
        self.total = len(self.order) // config.prompts_per_step
        self.total = min(self.total, config.optim.max_steps) if config.optim.max_steps else self.total
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer(config.optim, self.params, self.total * per_step)
        fill_deepspeed_buckets(self.accelerator, self.model)
        # DDP or the DeepSpeed engine around the policy; every model call goes through it
        self.scorer, self.optimizer = self.accelerator.prepare(PolicyCall(self.model), self.optimizer)
        self.owns_engine, self.engine = engine is None, engine or self._make_engine()
        self.runner = reward_runner(
            config.rewards, timeout_s=config.reward_timeout_s, memory_mb=config.reward_memory_mb
        )
        self.policy_loss = get_policy_loss(config.policy_loss)
        self.advantage = get_advantage_estimator(config.advantage)
        self.advantage_options = advantage_options(
            config.advantage, scale=config.advantage_scale, eps=config.advantage_eps
        )
        self.reference = self._kl_reference() if config.kl_coef > 0 else None
        self.ledger = PassRateLedger()

    def _kl_reference(self):
        """The frozen starting policy, called like the policy: partitioned in a DeepSpeed engine of its own under
        ZeRO-3, else a whole copy on this rank's device."""
        if self.zero3:
            return partitioned_reference(self.accelerator, self.config.model_path)
        return PolicyCall(load_policy(self.config.model_path)[0].eval().to(self.accelerator.device))

    def _prompt_order(self) -> list[int]:
        order = []
        for epoch in range(self.config.optim.epochs):
            shuffled = list(range(len(self.rows)))
            random.Random(self.config.seed + epoch).shuffle(shuffled)
            order += shuffled
        return order

    def _make_engine(self):
        """The configured engine; the HF engine samples from the trainer's own model object, or under ZeRO-3, where
        that object holds one partition, from a whole copy of its own."""
        c = self.config
        hf_zero3 = self.zero3 and c.engine == "hf"
        return make_engine(
            c.engine,
            c.model_path,
            model=unpartitioned_policy(self.accelerator, c.model_path) if hf_zero3 else self.model,
            processor=self.processor,
            max_tiles=c.max_tiles,
            batch_size=c.engine_batch_size,
            vllm=c.vllm,
            server=c.server,
        )

    def sampling(self, step: int) -> SamplingParams:
        """Step `step`'s sampling: `config.sampling` seeded with seed · 1000003 + step."""
        return self.config.sampling.params(seed=self.config.seed * 1_000_003 + step)

    def collect(self, step: int, cursor: int) -> tuple[list[Group], dict, int]:
        """Rollouts for `prompts_per_step` prompts from `cursor`, split over the ranks; with `drop_zero_variance`,
        dropped zero-variance groups are refilled from the following prompts, dealt to the ranks still short (at
        most 3 rounds), and every rank keeps as many groups as the fewest any rank holds. Returns (this rank's
        groups, metrics, new cursor)."""
        c, groups, stats = self.config, [], {"zero_variance_groups": 0, "rollout_tokens": 0, "rollout_s": 0.0}
        results, records_all, per_rank = [], [], c.prompts_per_step // self.world
        for _ in range(3 if c.drop_zero_variance else 1):
            wanted = [per_rank - n for n in rank_counts(self.accelerator, len(groups))]
            step_rows = [self.rows[i] for i in self.order[cursor : cursor + sum(wanted)]]
            if not step_rows:
                break
            cursor += len(step_rows)
            new_groups, records, result, seconds = self._sample_groups(deal_rows(step_rows, wanted, self.rank), step)
            stats["rollout_s"] += seconds
            results += [result] if result is not None else []
            records_all += records
            stats["zero_variance_groups"] += sum(g.zero_variance for g in new_groups)
            groups += [g for g in new_groups if not (c.drop_zero_variance and g.zero_variance)]
        groups = groups[: min(rank_counts(self.accelerator, len(groups)))]
        stats["kept_groups"] = len(groups)
        # Over every rank's rollouts (ranks may have sampled different numbers of prompts): the same on every rank
        everyone = all_ranks(self.accelerator, records_all)
        self.ledger.update_from_records(everyone)
        stats.update(_rollout_metrics(everyone, all_ranks(self.accelerator, results)))
        stats["rollout_tokens_per_s"] = stats["rollout_tokens"] = sum(r.num_tokens for r in records_all)
        stats["rollout_tokens_per_s"] /= max(stats["rollout_s"], 1e-9)
        return groups, stats, cursor

    def _sample_groups(self, rows, step: int):
        c = self.config
        if not rows:  # a rank that needs no refill this round
            return [], [], None, 0.0
        requests = [row_to_request(row, c.image_root, system_prompt=c.system_prompt) for row in rows]
        started = time.time()
        if hasattr(self.engine, "step"):
            self.engine.step = step  # so a dead server's error names the step
        rollouts = self.engine.generate(requests, n=c.sampling.n, sampling=self.sampling(step))
        seconds = time.time() - started
        records, result = score_rollouts(self.runner, rollouts, c.correct, {row.id: row for row in rows})
        groups = []
        for i, request in enumerate(requests):
            part = slice(i * c.sampling.n, (i + 1) * c.sampling.n)
            rewards = [r.reward for r in records[part]]
            groups.append(make_group(self.processor, request, rollouts[part], rewards, max_tiles=c.max_tiles))
        rewards = torch.cat([g.rewards for g in groups])
        advantages = self.advantage(rewards, c.sampling.n, **self.advantage_options)
        advantages = advantages.reshape(len(groups), c.sampling.n)
        for group, adv in zip(groups, advantages):
            group.advantages = adv
        return groups, records, result, seconds

    def update(self, groups: list[Group], step: int) -> dict:
        """`ppo_epochs` passes of mini-batch updates; each mini-batch's loss is the mean over its sequences."""
        c, sums, count, tokens, started = self.config, {}, 0, 0, time.time()
        for epoch in range(c.ppo_epochs):
            order = list(range(len(groups)))
            random.Random(f"{c.seed}:{step}:{epoch}").shuffle(order)
            per_rank = c.mini_batch_prompts // self.world
            for start in range(0, len(order), per_rank):
                batch = [groups[i] for i in order[start : start + per_rank]]
                metrics = self._mini_batch(batch)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                tokens += sum(int(g.mask.sum()) for g in batch)
        out = {key: value / max(count, 1) for key, value in sums.items()}
        out["update_tokens_per_s"] = tokens / max(time.time() - started, 1e-9)
        return out

    def _mini_batch(self, batch: list[Group]) -> dict:
        c = self.config
        n_seq = sum(g.size for g in batch)
        sums = {}
        for k, group in enumerate(batch):
            # gradients are averaged over the ranks once, after the last group (DeepSpeed steps there too)
            with micro_step(self.accelerator, self.scorer, last=k == len(batch) - 1) as backward:
                logps, mask = group.logps(self.scorer, **self.scoring)
                self._group_backward(group, logps, mask, n_seq, sums, backward)
        norm = self.accelerator.clip_grad_norm_(self.params, c.optim.max_grad_norm)  # DeepSpeed's: clipped in step
        sums["grad_norm"] = float(norm) if norm is not None else float("nan")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["lr"] = self.scheduler.get_last_lr()[0]
        return sums

    def _group_backward(self, group: Group, logps, mask, n_seq: int, sums: dict, backward) -> None:
        """Backward of one group's share of the mini-batch loss (its sequences / all of them); metrics into sums."""
        c = self.config
        advantages = group.advantages * self._is_weights(group)
        loss, metrics = self.policy_loss(
            logps,
            group.old_logps,
            advantages.to(logps.device),
            mask,
            clip_low=c.clip_low,
            clip_high=c.clip_high,
            aggregation=c.aggregation,
        )
        if self.reference is not None:
            kl = self._kl(group, logps, mask)
            loss = loss + c.kl_coef * kl
            metrics = {**metrics, "kl": kl.detach()}
        backward(loss * group.size / n_seq)
        for key, value in {"loss": loss.detach(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value.float().mean()) * group.size / n_seq

    def _is_weights(self, group: Group) -> torch.Tensor:
        """[G] `sequence_is_weights` of the trainer's old log-probs against the engine's (each over the engine's
        tokens), or ones without is_correction."""
        if self.config.is_correction == "none":
            return torch.ones(group.size)
        engine = torch.nn.utils.rnn.pad_sequence(group.engine_logps, batch_first=True)  # [G, T_engine]
        lengths = torch.tensor([len(e) for e in group.engine_logps])
        mask = torch.arange(engine.shape[1])[None] < lengths[:, None]
        trainer = group.old_logps[:, : engine.shape[1]].cpu()
        return sequence_is_weights(trainer, engine, mask, cap=self.config.is_cap)

    def _kl(self, group: Group, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`k3_kl` of the policy against the frozen reference on this group's completions."""
        with torch.no_grad():
            ref, _ = group.logps(self.reference, **self.scoring)
        return k3_kl(logps, ref, mask)

    def run(self) -> dict:
        """Train from the saved state (if any) to `total` steps; writes metrics, ledger, state and `final/`."""
        c, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            dump_yaml(c, self.out / "gspo_config.yaml")
        start, cursor = self._resume()
        log = MetricsLog(self.out / "metrics.jsonl", acc)
        start_trackers(acc, "cascade_rl_gspo", self.out, {"lr": c.optim.lr, "rollout_n": c.sampling.n})
        for step in tqdm(range(start, self.total), desc="gspo", unit="step", disable=not acc.is_main_process):
            groups, metrics, cursor = self.collect(step, cursor)
            if not groups:  # every rank agrees: they keep the same number of groups
                break
            if c.freeze_vision:
                cache_vision(self.scorer, groups, fixed_call_order=self.fixed_call_order)
            with acc.autocast():  # the precision of the training forwards, so the first ratios are 1
                metrics.update(compute_old_logps(self.scorer, groups, **self.scoring))
            metrics.update(self.update(groups, step))
            self.engine.update_weights(self.model)
            log.log(step + 1, combine_ranks(acc, metrics))
            if acc.is_main_process:
                self.ledger.save(self.out / "ledger.json")
            if c.save_steps and (step + 1) % c.save_steps == 0:
                self._save_state(step + 1, cursor)
        self.runner.close()
        summary = {"steps": self.total, "final": str(self.out / "final"), "ledger_prompts": len(self.ledger)}
        state = gathered_state_dict(acc, self.scorer) if self.zero3 else None  # every rank takes part
        if acc.is_main_process:
            save_policy(self.model, self.processor, self.out / "final", state_dict=state)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        acc.wait_for_everyone()
        if self.owns_engine:  # after the last barrier: a vLLM engine's shutdown tears down the process groups it
            self.engine.close()  # made or joined, and frees its device memory before the next stage starts
        end_run(acc)
        return summary

    def _save_state(self, step: int, cursor: int) -> None:
        """Every rank: the run state (under DeepSpeed each rank's engine partition too, train/state.py)."""
        save_run_state(
            self.out / "state",
            self.accelerator,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=step,
            extra={"cursor": cursor},
        )

    def _resume(self) -> tuple[int, int]:
        state = load_run_state(
            self.out / "state", self.accelerator, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        if state is None:
            if self.config.engine in ("server", "hf-server"):  # servers may hold another run's weights
                self.engine.update_weights(self.model)
            return 0, 0
        step, extra = state
        if (self.out / "ledger.json").exists():
            self.ledger = PassRateLedger.load(self.out / "ledger.json")
        self.engine.update_weights(self.model)
        return step, extra["cursor"]


def _rollout_metrics(records, results) -> dict:
    """Reward mean/std per reward and in total, pass rate, completion length, truncation, timeouts and errors."""
    out = {}
    totals = torch.tensor([r.reward for r in records], dtype=torch.float32)
    out["reward_mean"], out["reward_std"] = float(totals.mean()), float(totals.std()) if len(totals) > 1 else 0.0
    out["pass_rate"] = sum(r.correct for r in records) / max(len(records), 1)
    out["completion_length"] = sum(r.num_tokens for r in records) / max(len(records), 1)
    out["truncation_rate"] = sum(r.finish_reason == "length" for r in records) / max(len(records), 1)
    for result in results:
        for key, value in result.metrics().items():
            out[key] = out.get(key, 0.0) + value / len(results)
    return out


def run_gspo(config: GSPOConfig, engine=None) -> dict:
    """`cascade-rl gspo CONFIG [key=value ...]`: run the online stage; resumes from `out_dir/state`."""
    return GSPOTrainer(config, engine).run()
