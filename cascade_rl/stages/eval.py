"""Evaluation: generate answers for a held-out prompt file (greedy by default), score them, report accuracy.

One accuracy over mixed kinds of rows: `correct` is a list of rules (reward name, threshold). A completion is
graded by the first rule whose reward applies to it (returns a value, not None: the reward contract's "does not
apply"), and it is correct when that value ≥ the rule's threshold. On the synthetic shapes task `math` is None on
locate rows (no `answer`) and `iou` is None on count rows (no `bbox`), so
    correct = [{reward: math, threshold: 1.0}, {reward: iou, threshold: 0.5}]
grades counting by exact answer and locating by IoU ≥ 0.5, with no per-dataset code. A completion no rule applies
to counts as incorrect and is reported in `ungraded`.

    accuracy = #correct / #completions,   reward = mean over completions of the weighted total (None → 0, as the
    offline stage stores it),   per_reward[name] = mean of that reward over the completions it applies to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from cascade_rl.config import ConfigError, dump_yaml, from_dict
from cascade_rl.data import read_prompts, row_to_request
from cascade_rl.data.io import atomic_write_json, atomic_write_jsonl
from cascade_rl.rewards.scoring import CorrectRule, RewardSpec, check_rules, grade, reward_columns, reward_runner
from cascade_rl.rollout import Rollout, SamplingConfig
from cascade_rl.rollout.factory import ServerSettings
from cascade_rl.rollout.vllm_support import VLLMSettings
from cascade_rl.stages.rollout import check_sampling_stage, sampling_engine

# Greedy: one completion per prompt at temperature 0.
EVAL_SAMPLING = SamplingConfig(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=1024, seed=0)


@dataclass(frozen=True)
class EvalConfig:
    """`run_eval` settings. Greedy (`sampling` EVAL_SAMPLING) by default; with sampling.temperature > 0,
    sampling.n samples per prompt are drawn (seeded per prompt) and accuracy is the share of correct samples."""

    model_path: str = ""
    prompts: str = ""
    image_root: str | None = None
    out: str = "runs/eval/eval.json"
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    correct: list[CorrectRule] = field(default_factory=lambda: [CorrectRule("math", 1.0)])
    sampling: SamplingConfig = field(default_factory=lambda: EVAL_SAMPLING)
    engine: Literal["hf", "vllm", "server"] = "hf"  # server: vLLM servers serving model_path (checked)
    vllm: VLLMSettings = field(default_factory=VLLMSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    max_tiles: int = 12
    engine_batch_size: int = 8
    prompts_per_batch: int = 16
    system_prompt: str | None = None
    reward_timeout_s: float = 5.0
    reward_memory_mb: float = 2048.0  # per reward worker, beyond its size at start; past it a sample scores None
    on_error: Literal["raise", "skip"] = "raise"

    def __post_init__(self):
        check_sampling_stage(self)
        check_rules(self.rewards, self.correct)
        n = self.sampling.n
        if n > 1 and self.sampling.temperature <= 0:
            raise ValueError(
                f"sampling.n={n} greedy samples would all be identical; set sampling.temperature > 0 or n=1"
            )


def run_eval(config: EvalConfig, engine=None) -> dict:
    """Generate, score and grade every prompt; writes `out` (the summary) and `<out stem>.samples.jsonl`."""
    started = time.time()
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, read_summary = read_prompts(config.prompts, config.image_root, on_error=config.on_error)
    # Written once the input reads: a refused rerun keeps the last run's config.
    dump_yaml(config, out.with_name(out.stem + ".config.yaml"))
    if not rows:
        raise ValueError(f"{config.prompts}: no prompts to evaluate ({read_summary})")
    owned = engine is None
    if owned:
        engine = sampling_engine(config)
    sampling, rollouts = config.sampling.params(), []
    for start in tqdm(range(0, len(rows), config.prompts_per_batch), desc="eval", unit="batch"):
        chunk = rows[start : start + config.prompts_per_batch]
        requests = [row_to_request(row, config.image_root, system_prompt=config.system_prompt) for row in chunk]
        rollouts += engine.generate(requests, n=config.sampling.n, sampling=sampling)
    if owned:
        engine.close()
    with reward_runner(config.rewards, timeout_s=config.reward_timeout_s, memory_mb=config.reward_memory_mb) as runner:
        result = runner.score([r.text for r in rollouts], **reward_columns(rollouts))
    samples = [_sample(i, r, result, config.correct) for i, r in enumerate(rollouts)]
    summary = summarise(samples, result, config.correct)
    summary.update(prompts=len(rows), skipped_prompts=read_summary.n_skipped, wall_s=round(time.time() - started, 2))
    atomic_write_json(out, summary)
    atomic_write_jsonl(out.with_name(out.stem + ".samples.jsonl"), samples)
    return summary


def _sample(i: int, rollout: Rollout, result, rules: list[CorrectRule]) -> dict:
    values = {name: result.per_reward[name][i] for name in result.per_reward}
    graded_by, correct = grade(values, rules)
    return {
        "prompt_id": rollout.prompt_id,
        "sample_index": rollout.sample_index,
        "text": rollout.text,
        "finish_reason": rollout.finish_reason,
        "rewards": values,
        "reward": result.total[i],
        "graded_by": graded_by,
        "correct": correct,
    }


def summarise(samples: list[dict], result, rules: list[CorrectRule]) -> dict:
    """The numbers of the module docstring, plus accuracy per grading rule and reward-runner failure counts."""
    n = len(samples)
    per_reward = {}
    for name, values in result.per_reward.items():
        scored = [v for v in values if v is not None]
        per_reward[name] = sum(scored) / len(scored) if scored else math.nan
    by_rule = {}
    for rule in rules:
        graded = [s["correct"] for s in samples if s["graded_by"] == rule.reward]
        if graded:
            by_rule[rule.reward] = {"accuracy": sum(graded) / len(graded), "n": len(graded)}
    return {
        "accuracy": sum(s["correct"] for s in samples) / n,
        "reward": sum(s["reward"] or 0.0 for s in samples) / n,
        "per_reward": per_reward,
        "accuracy_by_rule": by_rule,
        "n": n,
        "ungraded": sum(s["graded_by"] is None for s in samples),
        "truncated": sum(s["finish_reason"] == "length" for s in samples),
        "reward_timeouts": dict(result.timeouts),
        "reward_errors": dict(result.errors),
    }


@dataclass(frozen=True)
class EvalSuite:
    """checkpoints: label → checkpoint directory; settings: EvalConfig keys shared by every evaluation."""

    checkpoints: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    out_dir: str = ""

    def __post_init__(self):
        for label in self.checkpoints:
            self.eval_config(label)  # unknown or bad eval keys fail here, before any model is loaded

    def eval_config(self, label: str) -> EvalConfig:
        values = {
            **self.settings,
            "model_path": self.checkpoints[label],
            "out": str(Path(self.out_dir) / f"{label}.json"),
        }
        try:
            return from_dict(EvalConfig, values)
        except ConfigError as err:
            raise ValueError(f"eval: {err}") from err

    def resolved_settings(self) -> dict:
        """`settings` with every EvalConfig default filled in (sections included), as `print-config` shows them."""
        if not self.checkpoints:
            return dict(self.settings)
        resolved = dataclasses.asdict(self.eval_config(next(iter(self.checkpoints))))
        return {key: value for key, value in resolved.items() if key not in ("model_path", "out")}


def run_evals(suite: EvalSuite) -> dict:
    """Evaluate each checkpoint (skipping those already evaluated); writes summary.json:
    {"accuracy": {label: a}, "reward": {label: r}, "per_reward": {label: {...}}}."""
    results = {}
    for label in suite.checkpoints:
        config = suite.eval_config(label)
        done = Path(config.out)
        results[label] = json.loads(done.read_text()) if done.exists() else run_eval(config)
    summary = {
        "accuracy": {label: r["accuracy"] for label, r in results.items()},
        "reward": {label: r["reward"] for label, r in results.items()},
        "per_reward": {label: r.get("per_reward", {}) for label, r in results.items()},
    }
    atomic_write_json(Path(suite.out_dir) / "summary.json", summary)
    return summary
