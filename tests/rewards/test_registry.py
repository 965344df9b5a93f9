"""Finding rewards: built-ins, ``module:function`` paths, entry-point plugins, and helpful errors."""

import pytest

from cascade_rl.rewards import BUILTIN_REWARDS, RewardRunner, available_rewards, get_reward
from cascade_rl.rewards.contract import check_rewards, column_names, in_process, runs_in_process

BUILTINS = [
    "anls",
    "choice",
    "click",
    "format",
    "geo3k",
    "giou",
    "grounding_accuracy",
    "iou",
    "math",
    "relaxed_accuracy",
    "think_format",
    "vqa_score",
]


def test_builtins_are_registered():
    assert sorted(BUILTIN_REWARDS) == BUILTINS
    for name in BUILTINS:
        assert callable(get_reward(name))


def test_cheap_builtins_run_in_process_and_the_costly_ones_do_not():
    for name in ("math", "geo3k", "anls"):  # sympy; an O(n·m) edit distance against a long gold
        assert not runs_in_process(get_reward(name)), name
    cheap = ("iou", "giou", "grounding_accuracy", "click", "format", "think_format", "relaxed_accuracy", "vqa_score")
    for name in (*cheap, "choice"):
        assert runs_in_process(get_reward(name)), name


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as excinfo:
        get_reward("maths")
    message = str(excinfo.value)
    assert "unknown reward 'maths'" in message
    for name in BUILTINS:
        assert name in message
    assert "module:function" in message


def test_module_function_path(user_rewards):
    fn = get_reward("cascade_rl_test_user_rewards:length_reward")
    assert fn is user_rewards.length_reward
    assert fn(["ab", "abcd"]) == [2.0, 4.0]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("cascade_rl_test_user_rewards:missing", "has no attribute 'missing'"),
        ("cascade_rl_test_user_rewards:", "must look like"),
        (":length_reward", "must look like"),
        ("cascade_rl_test_user_rewards:os", "not a function"),
    ],
)
def test_bad_paths_say_what_is_wrong(user_rewards, path, fragment):
    with pytest.raises(ValueError, match=fragment):
        get_reward(path)


def test_get_reward_rejects_non_strings():
    with pytest.raises(TypeError):
        get_reward(42)


def test_entry_point_plugin(installed_plugin, user_rewards):
    assert installed_plugin in available_rewards()
    assert get_reward(installed_plugin) is user_rewards.length_reward
    # ... and a runner runs it in a worker process, which finds the same plugin
    with RewardRunner([installed_plugin], num_workers=1, timeout_s=10) as runner:
        assert runner.score(["abc", "a"]).per_reward[installed_plugin] == [3.0, 1.0]


def test_available_rewards_without_plugins():
    assert available_rewards()[: len(BUILTINS)] == BUILTINS


def test_check_rewards():
    assert check_rewards([1, None, True, 0.5], 4) == [1.0, None, 1.0, 0.5]
    with pytest.raises(ValueError, match="list of 2 values"):
        check_rewards([1.0], 2)
    with pytest.raises(ValueError, match="list of 1 values"):
        check_rewards("1", 1)
    with pytest.raises(ValueError, match="number or None"):
        check_rewards(["high"], 1)
    with pytest.raises(ValueError, match="finite"):
        check_rewards([float("inf")], 1)


def test_column_names():
    def reward(completions, answer, bbox=None, **columns):
        return []

    def strict(completions, answer):
        return []

    def ignores_the_rest(completions, answer, **_):
        return []

    assert column_names(reward) == (None, {"answer"})
    assert column_names(strict) == ({"answer"}, {"answer"})
    assert column_names(ignores_the_rest) == ({"answer"}, {"answer"})
    assert column_names(get_reward("math")) == ({"answer"}, {"answer"})  # images and the like stay home


def test_in_process_marker():
    @in_process
    def cheap(completions, **columns):
        return [0.0] * len(completions)

    assert runs_in_process(cheap)
    assert not runs_in_process(lambda completions: [])
