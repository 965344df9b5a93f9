"""Fixtures for the reward tests: a throw-away module of user rewards, and a fake installed plugin.

Both live in a temporary directory put on ``sys.path``, as a user's package would be; worker processes inherit
``sys.path`` when they start, so they can import the same module.
"""

import importlib
import sys
import textwrap

import pytest

USER_REWARDS = '''
"""User rewards for the tests, as a researcher would write them."""
import os
import time


def length_reward(completions, **columns):
    return [float(len(c)) for c in completions]


def match_target(completions, target, **columns):
    return [1.0 if c == t else 0.0 for c, t in zip(completions, target)]


def raising_reward(completions, **columns):
    if any("boom" in c for c in completions):
        raise ValueError("boom in the completion")
    return [1.0] * len(completions)


def sleeping_reward(completions, **columns):
    if any("sleep" in c for c in completions):
        while True:  # sleeps forever
            time.sleep(60)
    return [1.0] * len(completions)


def crashing_reward(completions, **columns):
    if any("crash" in c for c in completions):
        os._exit(3)  # the worker process dies without a word
    return [1.0] * len(completions)


def wrong_length_reward(completions, **columns):
    return [1.0] * (len(completions) + 1)


def nan_reward(completions, **columns):
    return [float("nan") if "nan" in c else 1.0 for c in completions]


def none_for_short(completions, **columns):
    return [None if len(c) < 3 else 1.0 for c in completions]


def mixed_reward(completions, **columns):
    """By prefix: "stuck" never returns, "slow:0.2" sleeps that long, "raise" raises, "crash" kills the process."""
    values = []
    for c in completions:
        kind, _, arg = c.partition(":")
        if kind == "stuck":
            while True:
                time.sleep(60)
        if kind == "slow":
            time.sleep(float(arg))
        if kind == "raise":
            raise RuntimeError("raised on purpose")
        if kind == "crash":
            os._exit(7)
        values.append(float(len(c)))
    return values


def hungry_reward(completions, **columns):
    """Allocates without bound on a "hungry" completion (address space, not touched pages: cheap for the host)."""
    if any("hungry" in c for c in completions):
        blocks = []
        while True:
            blocks.append(bytearray(256 * 2**20))
    return [1.0] * len(completions)


def pid_reward(completions, **columns):
    return [float(os.getpid())] * len(completions)


def scaled_pid(completions, scale=1.0, **columns):
    """The scoring process's id times ``scale``: shows where it ran and that ``scale`` got there."""
    return [scale * os.getpid()] * len(completions)
'''

PLUGIN_METADATA = "Metadata-Version: 2.1\nName: cascade-rl-test-plugin\nVersion: 1.0\n"


@pytest.fixture(scope="session")
def user_rewards(tmp_path_factory):
    """The module above, importable as ``cascade_rl_test_user_rewards``."""
    root = tmp_path_factory.mktemp("user_rewards")
    (root / "cascade_rl_test_user_rewards.py").write_text(textwrap.dedent(USER_REWARDS))
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    module = importlib.import_module("cascade_rl_test_user_rewards")
    yield module
    sys.path.remove(str(root))
    sys.modules.pop("cascade_rl_test_user_rewards", None)


@pytest.fixture()
def installed_plugin(user_rewards, tmp_path, monkeypatch):
    """A fake installed distribution declaring ``text_length`` in the ``cascade_rl.rewards`` entry-point group."""
    dist_info = tmp_path / "cascade_rl_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(PLUGIN_METADATA)
    (dist_info / "entry_points.txt").write_text(
        "[cascade_rl.rewards]\ntext_length = cascade_rl_test_user_rewards:length_reward\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "text_length"
