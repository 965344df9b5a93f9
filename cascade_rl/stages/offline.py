"""Offline stage: sample rollouts → score → crash-safe store → pass-rate ledger → preference pairs (SPEC §2).

Each function reads files and writes files: `run_rollouts` fills `out_dir/rollouts/` and `out_dir/ledger.json`,
`run_pairs` turns a store into MMPR pairs, `run_filter` keeps the prompts of moderate difficulty. Rerunning
`run_rollouts` resumes: prompts whose n samples are stored are skipped, a torn last line is dropped, and because
rollouts are seeded per prompt the resumed run stores what an uninterrupted run would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cascade_rl.config import dump_yaml
from cascade_rl.data import read_prompts, row_to_request
from cascade_rl.data_tools.filter import filter_by_pass_rate, select_prompt_rows
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.data_tools.pairs import build_pairs, write_pairs
from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.data_tools.store import RolloutStore
from cascade_rl.rewards import RewardResult, RewardRunner
from cascade_rl.rewards.parsing import extract_final_answer
from cascade_rl.rollout import Rollout, SamplingParams
from cascade_rl.rollout.vllm_support import VLLMSettings, require_vllm
from cascade_rl.stages.scoring import CorrectRule, RewardSpec, check_rules, grade, reward_columns


@dataclass(frozen=True)
class SamplingConfig:
    """InternVL's MMPR pipeline samples 32 rollouts at temperature 0.7, top_k 50, top_p 1.0 (SPEC §2)."""

    n: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError("n and max_new_tokens must be at least 1")


@dataclass(frozen=True)
class RolloutStageConfig:
    """`cascade-rl rollout CONFIG [key=value ...]`. Correctness (pair positives, pass rates): `correct` rules, see
    stages/scoring.py."""

    model_path: str = ""
    prompts: str = ""
    image_root: str | None = None
    out_dir: str = "runs/offline"
    engine: str = "hf"
    max_tiles: int = 6
    engine_batch_size: int = 8
    prompts_per_batch: int = 8
    system_prompt: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    correct: list[CorrectRule] = field(default_factory=lambda: [CorrectRule("math", 1.0)])
    reward_timeout_s: float = 5.0
    on_error: str = "raise"

    def __post_init__(self):
        if not self.model_path or not self.prompts:
            raise ValueError("model_path and prompts are required")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be 'hf' or 'vllm', got {self.engine!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        check_rules(self.rewards, self.correct)


def make_engine(config: RolloutStageConfig):
    """The stage's engine; vLLM reads the weights itself, so only the processor is loaded for it."""
    from cascade_rl.models.io import load_policy, load_processor

    if config.engine == "vllm":
        from cascade_rl.rollout.vllm import VLLMEngine

        return VLLMEngine(
            config.model_path, load_processor(config.model_path), max_tiles=config.max_tiles, settings=config.vllm
        )
    from cascade_rl.rollout import HFEngine

    model, processor = load_policy(config.model_path)
    return HFEngine(model, processor, max_tiles=config.max_tiles, batch_size=config.engine_batch_size)


def run_rollouts(config: RolloutStageConfig, engine=None) -> dict:
    """Sample, score and store rollouts for every prompt not yet done; write the ledger and a summary."""
    if engine is None and config.engine == "vllm":
        require_vllm()  # before any work
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "rollout_config.yaml")
    rows, read_summary = read_prompts(config.prompts, config.image_root, on_error=config.on_error)
    store = RolloutStore(out / "rollouts")
    done = store.done_prompt_ids(config.sampling.n)
    todo = [row for row in rows if row.id not in done]
    owned, engine = engine is None, engine or make_engine(config)
    sampling = SamplingParams(**{k: getattr(config.sampling, k) for k in SamplingParams.__dataclass_fields__})
    started, stats = time.time(), {"prompts": len(todo), "rollouts": 0, "tokens": 0}
    with RewardRunner(
        [r.name for r in config.rewards], weights=[r.weight for r in config.rewards], timeout_s=config.reward_timeout_s
    ) as runner:
        for start in tqdm(range(0, len(todo), config.prompts_per_batch), desc="rollout", unit="batch"):
            chunk = todo[start : start + config.prompts_per_batch]
            requests = [row_to_request(row, config.image_root, system_prompt=config.system_prompt) for row in chunk]
            rollouts = engine.generate(requests, n=config.sampling.n, sampling=sampling)
            records, _ = score_rollouts(runner, rollouts, config, {row.id: row for row in chunk})
            store.append(records)
            stats["rollouts"] += len(records)
            stats["tokens"] += sum(r.num_tokens for r in records)
    store.close()
    if owned:
        engine.close()  # a vLLM engine frees its device memory before the next stage starts
    ledger = PassRateLedger.from_records(RolloutStore(out / "rollouts", readonly=True).iter_records())
    ledger.save(out / "ledger.json")
    summary = {
        "prompts_in_file": len(rows) + read_summary.n_skipped,
        "prompts_skipped_bad_input": read_summary.n_skipped,
        "prompts_already_done": len(rows) - len(todo),
        **stats,
        "wall_s": round(time.time() - started, 2),
        "ledger_prompts": len(ledger),
        "store_repairs": store.repairs,
    }
    (out / "rollout_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def score_rollouts(runner: RewardRunner, rollouts: list[Rollout], config, rows: dict) -> tuple[list, RewardResult]:
    """(RolloutRecords, the runner's RewardResult). A record is correct by `config.correct` (stages/scoring.py);
    parseable when a final answer (last `\\boxed{}` or `Answer:` line) can be read off the text, or when it is
    correct (a box answer has no `\\boxed{}`). `rows` maps prompt id → PromptRow."""
    result = runner.score([r.text for r in rollouts], **reward_columns(rollouts))
    records = []
    for i, rollout in enumerate(rollouts):
        per_reward = {name: values[i] for name, values in result.per_reward.items()}
        answer_pred = extract_final_answer(rollout.text)
        _, correct = grade(per_reward, config.correct)
        row = rows[rollout.prompt_id]
        records.append(
            RolloutRecord(
                prompt_id=rollout.prompt_id,
                sample_index=rollout.sample_index,
                text=rollout.text,
                token_ids=rollout.token_ids,
                logprobs=rollout.logprobs,
                finish_reason=rollout.finish_reason,
                reward=float(result.total[i] or 0.0),
                correct=correct,
                rewards=per_reward,
                parseable=answer_pred is not None or correct,
                answer_pred=answer_pred,
                question=row.question,
                images=list(row.images),
                answer=row.answer,
                meta={k: v for k, v in rollout.meta.items() if k not in ("question", "images", "answer")},
            )
        )
    return records, result


@dataclass(frozen=True)
class PairsStageConfig:
    """`cascade-rl pairs CONFIG`: MMPR pairs from a rollout store (InternVL keeps ≤ 15 per prompt, seed 0)."""

    rollouts: str = ""
    out: str = ""
    max_pairs_per_prompt: int = 15
    seed: int = 0

    def __post_init__(self):
        if not self.rollouts or not self.out:
            raise ValueError("rollouts (a store directory) and out (a pairs .jsonl path) are required")


def run_pairs(config: PairsStageConfig) -> dict:
    store = RolloutStore(config.rollouts, readonly=True)
    pairs, summary = build_pairs(
        store.iter_records(), max_pairs_per_prompt=config.max_pairs_per_prompt, seed=config.seed
    )
    path = write_pairs(config.out, pairs)
    result = {"pairs": len(pairs), "out": str(path), **summary.as_dict()}
    Path(str(path) + ".summary.json").write_text(json.dumps(result, indent=2))
    return result


@dataclass(frozen=True)
class FilterStageConfig:
    """`cascade-rl filter CONFIG`: prompts whose ledger pass rate lies in [low, high] (the MMPR-Tiny rule)."""

    ledger: str = ""
    prompts: str = ""
    out: str = ""
    low: float = 0.2
    high: float = 0.8

    def __post_init__(self):
        if not (self.ledger and self.prompts and self.out):
            raise ValueError("ledger, prompts and out are required")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 ≤ low ≤ high ≤ 1, got low={self.low}, high={self.high}")


def run_filter(config: FilterStageConfig) -> dict:
    ledger = PassRateLedger.load(config.ledger)
    keep = filter_by_pass_rate(ledger, low=config.low, high=config.high)
    summary = select_prompt_rows(config.prompts, keep, config.out)
    return {"ledger_prompts": len(ledger), "kept": len(keep), **vars(summary)}
