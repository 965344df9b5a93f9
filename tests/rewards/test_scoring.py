"""RewardSpec.kwargs: from a stage config's YAML to the reward function, in this process and in a worker; a key the
reward has no parameter for is refused when the config is built."""

import os

import pytest

from cascade_rl.config import ConfigError, from_dict
from cascade_rl.rewards.scoring import RewardSpec, reward_runner
from cascade_rl.stages.eval import EvalConfig

MODULE = "cascade_rl_test_user_rewards"


def eval_config(rewards):
    """An EvalConfig as a recipe's YAML would give it (nothing loaded: building checks the keys)."""
    values = {"model_path": "m", "prompts": "p.jsonl", "rewards": rewards, "correct": [{"reward": rewards[0]["name"]}]}
    return from_dict(EvalConfig, values)


def test_kwargs_from_yaml_reach_an_in_process_reward():
    config = eval_config([{"name": "grounding_accuracy", "kwargs": {"threshold": 0.7}}, {"name": "iou"}])
    assert config.rewards[0] == RewardSpec("grounding_accuracy", 1.0, {"threshold": 0.7})
    with reward_runner(config.rewards, num_workers=1) as runner:
        # IoU of [0, 0, 100, 100] with [0, 0, 100, 60] is 0.6: a hit at the default 0.5, a miss at 0.7
        result = runner.score(["[0, 0, 100, 100]"], bbox=[[0, 0, 100, 60]])
    assert result.per_reward == {"grounding_accuracy": [0.0], "iou": [pytest.approx(0.6)]}


def test_kwargs_reach_a_reward_in_a_worker_process(user_rewards):
    specs = [RewardSpec(f"{MODULE}:scaled_pid", weight=1.0, kwargs={"scale": 2.0}), RewardSpec(f"{MODULE}:pid_reward")]
    with reward_runner(specs, num_workers=1, timeout_s=30) as runner:
        result = runner.score(["a", "b"])
    scaled, pids = result.per_reward[f"{MODULE}:scaled_pid"], result.per_reward[f"{MODULE}:pid_reward"]
    assert pids[0] != os.getpid()  # scored in the worker
    assert scaled == [2.0 * pids[0]] * 2


def test_an_unknown_kwarg_is_refused_at_config_time_with_the_accepted_ones():
    with pytest.raises(ConfigError) as err:
        eval_config([{"name": "grounding_accuracy", "kwargs": {"treshold": 0.7}}])
    message = str(err.value)
    assert "rewards[0]: reward 'grounding_accuracy' has no parameter(s) ['treshold']" in message
    assert "its options: threshold=0.5; its columns: bbox" in message


def test_kwargs_must_be_a_mapping_of_names():
    with pytest.raises(ConfigError, match="kwargs must map parameter names to values"):
        eval_config([{"name": "iou", "kwargs": [0.7]}])


def test_a_spec_without_kwargs_loads_no_reward_function():
    RewardSpec("not_a_reward_yet")  # named plugins may be installed later; only kwargs need the function now
