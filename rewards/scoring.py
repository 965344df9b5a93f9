"""What every stage that scores rollouts shares: which rewards to run, and when a completion counts as correct.

`correct` is a list of rules (reward name, threshold). A completion is graded by the first rule whose reward
applies to it (returns a value, not None: the reward contract's "does not apply"), and is correct when that value
≥ the rule's threshold (> with `above: true`). On a mixed dataset — `math` is None on rows without `answer`, `iou`
None on rows without `bbox` — `[{reward: math, threshold: 1.0}, {reward: iou, threshold: 0.5}]` grades each row by
its own kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cascade_rl.data_tools.records import RolloutRecord
from cascade_rl.rewards.parsing import extract_final_answer
from cascade_rl.rewards.registry import check_reward_kwargs, get_reward
from cascade_rl.rewards.runner import RewardResult, RewardRunner
from cascade_rl.rollout.base import Rollout


@dataclass(frozen=True)
class RewardSpec:
    """One reward of the weighted sum: a built-in name or "package.module:function", its weight, and `kwargs`
    bound to the function's named parameters in every call (YAML: `{name: grounding_accuracy, kwargs:
    {threshold: 0.7}}`). A `kwargs` key the function has no parameter for is refused here, at config time."""

    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.kwargs, dict) or not all(isinstance(key, str) for key in self.kwargs):
            raise ValueError(f"reward {self.name!r}: kwargs must map parameter names to values, got {self.kwargs!r}")
        if self.kwargs:  # imports the function: only when there is something to check
            check_reward_kwargs(self.name, get_reward(self.name), self.kwargs)


@dataclass(frozen=True)
class CorrectRule:
    """A completion graded by `reward` is correct when its value ≥ `threshold`, or > it with `above: true`
    (InternVL's graders: correct when the score is above 0.9)."""

    reward: str
    threshold: float = 1.0
    above: bool = False

    def passes(self, value: float) -> bool:
        return value > self.threshold if self.above else value >= self.threshold


def grade(values: dict[str, float | None], rules: list[CorrectRule]) -> tuple[str | None, bool]:
    """(name of the rule's reward that graded this completion or None, correct?) — the first applicable rule wins."""
    for rule in rules:
        value = values.get(rule.reward)
        if value is not None:
            return rule.reward, rule.passes(value)
    return None, False


def check_rules(rewards: list[RewardSpec], rules: list[CorrectRule]) -> None:
    """Refuse a rule naming a reward that is not computed (its grade would silently never apply)."""
    names = [r.name for r in rewards]
    missing = [rule.reward for rule in rules if rule.reward not in names]
    if missing or not rules:
        raise ValueError(f"correct rules name rewards {missing or '(none)'} not among rewards {names}")


def reward_runner(specs: list[RewardSpec], **runner_kwargs) -> RewardRunner:
    """A RewardRunner over `specs`: their names, weights and kwargs (bound in the worker processes as well);
    `runner_kwargs` go to its constructor (`timeout_s`, `num_workers`)."""
    return RewardRunner.from_config([dataclasses.asdict(spec) for spec in specs], **runner_kwargs)


def reward_columns(rollouts: list[Rollout]) -> dict[str, list]:
    """Dataset columns for the reward runner: one list per column over all rollouts (None where a row lacks it)."""
    keys = sorted({key for r in rollouts for key in r.meta})
    return {key: [r.meta.get(key) for r in rollouts] for key in keys}


def score_rollouts(
    runner: RewardRunner, rollouts: list[Rollout], rules: list[CorrectRule], rows: dict
) -> tuple[list[RolloutRecord], RewardResult]:
    """(RolloutRecords, the runner's RewardResult). A record is correct by the first applicable rule (`grade`);
    parseable when a final answer (last `\\boxed{}` or `Answer:` line) can be read off the text, or when it is
    correct (a box answer has no `\\boxed{}`). `rows` maps prompt id → PromptRow."""
    result = runner.score([r.text for r in rollouts], **reward_columns(rollouts))
    records = []
    for i, rollout in enumerate(rollouts):
        per_reward = {name: values[i] for name, values in result.per_reward.items()}
        answer_pred = extract_final_answer(rollout.text)
        _, correct = grade(per_reward, rules)
        row = rows[rollout.prompt_id]
        record = RolloutRecord.from_rollout(
            rollout,
            reward=float(result.total[i] or 0.0),
            correct=correct,
            rewards=per_reward,
            parseable=answer_pred is not None or correct,
            answer_pred=answer_pred,
            question=row.question,
            images=list(row.images),
            answer=row.answer,
        )
        records.append(record)
    return records, result
