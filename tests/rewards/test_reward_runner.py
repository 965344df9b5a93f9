"""RewardRunner: weights and order, None handling, isolation, timeouts, crashes, hostile input, life cycle."""

import gc
import logging
import math
import os
import random
import threading
import time

import pytest

from cascade_rl.rewards import RewardRunner, in_process

MODULE = "cascade_rl_test_user_rewards"


def boxed(answer):
    return f"Therefore the answer is \\boxed{{{answer}}}."


@pytest.fixture(scope="module")
def math_format_runner():
    with RewardRunner(["math", "format"], weights=[0.9, 0.1], num_workers=2, timeout_s=5) as runner:
        yield runner


def test_weighted_total_in_input_order(math_format_runner):
    # 150 completions: enough for several chunks per worker, so reordering would show.
    completions, golds, expected_math, expected_format = [], [], [], []
    for i in range(150):
        right = i % 3 != 0
        answer = i if right else i + 1
        if i % 2:
            completions.append(f"Work.\nAnswer: \\boxed{{{answer}}}")  # InternVL format
            expected_format.append(1.0)
        else:
            completions.append(boxed(answer))
            expected_format.append(0.0)
        golds.append(str(i))
        expected_math.append(1.0 if right else 0.0)
    result = math_format_runner.score(completions, answer=golds)
    assert result.per_reward["math"] == expected_math
    assert result.per_reward["format"] == expected_format
    assert result.total == [pytest.approx(0.9 * m + 0.1 * f) for m, f in zip(expected_math, expected_format)]
    assert result.timeouts == {"math": 0, "format": 0}
    assert result.errors == {"math": 0, "format": 0}
    assert list(result.per_reward) == ["math", "format"]


def test_none_contributes_nothing_and_all_none_is_none(user_rewards):
    with RewardRunner([f"{MODULE}:none_for_short", "format"], weights=[2.0, 0.5], num_workers=1) as runner:
        result = runner.score(["ab", "abcd", "Answer: \\boxed{1}"])
    assert result.per_reward[f"{MODULE}:none_for_short"] == [None, 1.0, 1.0]
    assert result.per_reward["format"] == [0.0, 0.0, 1.0]
    assert result.total == [0.0, 2.0, 2.5]  # the None reward adds nothing to the first total

    with RewardRunner([f"{MODULE}:none_for_short"], num_workers=1) as runner:
        assert runner.score(["ab", "abc"]).total == [None, 1.0]


def test_empty_batch(math_format_runner):
    result = math_format_runner.score([], answer=[])
    assert result.total == [] and result.per_reward == {"math": [], "format": []}


def test_raising_reward_scores_none_counts_and_logs_once(user_rewards, caplog):
    completions = ["fine", "boom", "fine", "boom", "boom"]
    with caplog.at_level(logging.WARNING, logger="cascade_rl.rewards"):
        with RewardRunner([f"{MODULE}:raising_reward"], num_workers=2) as runner:
            result = runner.score(completions)
            again = runner.score(["boom"])
    name = f"{MODULE}:raising_reward"
    assert result.per_reward[name] == [1.0, None, 1.0, None, None]
    assert result.total == [1.0, None, 1.0, None, None]
    assert result.errors[name] == 3 and result.timeouts[name] == 0
    assert again.errors[name] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per reward, with its traceback
    assert "ValueError: boom in the completion" in warnings[0].getMessage()
    assert "Traceback" in warnings[0].getMessage()


def test_in_process_reward_that_raises_is_isolated_per_sample(caplog):
    @in_process
    def picky(completions, **columns):
        if any(c == "bad" for c in completions):
            raise RuntimeError("bad sample")
        return [1.0] * len(completions)

    with RewardRunner([picky], num_workers=1) as runner:
        result = runner.score(["ok", "bad", "ok"])
    assert result.per_reward["picky"] == [1.0, None, 1.0]
    assert result.errors["picky"] == 1


@pytest.mark.parametrize("reward", ["wrong_length_reward", "nan_reward"])
def test_malformed_output_is_an_error(user_rewards, reward):
    with RewardRunner([f"{MODULE}:{reward}"], num_workers=1) as runner:
        result = runner.score(["nan", "x"])
    values = result.per_reward[f"{MODULE}:{reward}"]
    if reward == "nan_reward":
        assert values == [None, 1.0] and result.errors[f"{MODULE}:{reward}"] == 1
    else:  # one value too many, every time
        assert values == [None, None] and result.errors[f"{MODULE}:{reward}"] == 2


def test_crashing_worker_is_an_error_and_replaced(user_rewards):
    name = f"{MODULE}:crashing_reward"
    with RewardRunner([name], num_workers=2) as runner:
        result = runner.score(["a", "crash", "b", "c"])
        assert result.per_reward[name] == [1.0, None, 1.0, 1.0]
        assert result.errors[name] == 1
        assert runner.score(["d"]).per_reward[name] == [1.0]  # the pool recovered


def test_reward_that_sleeps_forever_times_out_within_the_bound(user_rewards):
    name = f"{MODULE}:sleeping_reward"
    timeout, workers = 2.0, 2
    completions = ["ok"] * 10 + ["sleep"] * 3 + ["ok"] * 10
    with RewardRunner([name], num_workers=workers, timeout_s=timeout) as runner:
        runner.score(["ok"])  # workers up
        start = time.perf_counter()
        result = runner.score(completions)
        elapsed = time.perf_counter() - start
        assert result.per_reward[name] == [1.0] * 10 + [None] * 3 + [1.0] * 10
        assert result.timeouts[name] == 3 and result.errors[name] == 0
        # Side by side: timeout x ceil(stuck / workers) = 2 x 2 s, plus killing and replacing workers. One after the
        # other would take at least 3 x 2 s: the bound sits there, so a loaded machine's slack cannot fail it.
        assert elapsed < timeout * 3
        start = time.perf_counter()
        assert runner.score(["ok", "ok"]).per_reward[name] == [1.0, 1.0]  # replacements work
        assert time.perf_counter() - start < timeout  # answered, not waited out


def test_stuck_samples_in_one_chunk_run_side_by_side(user_rewards):
    # Both sleepers land in the first worker's chunk; without handing its rest back to the other worker they
    # would time out one after the other (2 x timeout). With it, the batch takes about one timeout.
    name = f"{MODULE}:sleeping_reward"
    timeout = 2.0
    with RewardRunner([name], num_workers=2, timeout_s=timeout) as runner:
        runner.score(["ok"])
        start = time.perf_counter()
        result = runner.score(["sleep", "sleep"] + ["ok"] * 10)
        elapsed = time.perf_counter() - start
    assert result.timeouts[name] == 2
    assert result.per_reward[name] == [None, None] + [1.0] * 10
    assert elapsed < timeout * 2  # about one timeout; one after the other would be at least two


def test_random_mixes_of_stuck_slow_raising_and_crashing_samples(user_rewards):
    # Whatever the mix and the scheduling, every sample gets exactly its own outcome, in order.
    rng = random.Random(7)
    name = f"{MODULE}:mixed_reward"
    kinds = ["stuck:", "slow:0.05", "slow:0.2", "raise:", "crash:"]
    with RewardRunner([name], num_workers=2, timeout_s=0.5) as runner:
        for _ in range(3):
            completions = [
                rng.choice(kinds) if rng.random() < 0.15 else f"ok{i}" * rng.randint(1, 3) for i in range(60)
            ]
            result = runner.score(completions)
            expected = [None if c.startswith(("stuck", "raise", "crash")) else float(len(c)) for c in completions]
            assert result.per_reward[name] == expected
            assert result.timeouts[name] == sum(c.startswith("stuck") for c in completions)
            assert result.errors[name] == sum(c.startswith(("raise", "crash")) for c in completions)


HOSTILE = [
    boxed("9^{9^{9^{9}}}"),  # exponent towers: sympy would compute them for ever
    boxed("2^{2^{2^{2^{2^{2}}}}}"),
    boxed("10^{10^{10}}"),
    "The sum is $\\boxed{" + "+".join(["1"] * 50_000) + "}$",  # 100k characters
    "$\\boxed{" + "\\frac{" * 5000 + "1" + "}{2}" * 5000 + "}$",  # 5,000 nested fractions
    "So \\boxed{" + "{" * 5000 + "12" + " and so on" * 10,  # unbalanced braces
    "Answer: \\frac{" * 5000,
]


def test_hostile_batch_finishes_within_the_bound_and_normal_answers_stay_right():
    timeout, workers = 2.0, 2
    normal = [(boxed(i), str(i), 1.0) if i % 2 else (boxed(i + 1), str(i), 0.0) for i in range(24)]
    completions = [c for c, _, _ in normal]
    golds = [g for _, g, _ in normal]
    for position, text in zip((0, 3, 4, 10, 11, 17, 23), HOSTILE):  # mixed in, two pairs side by side
        completions.insert(position, text)
        golds.insert(position, "5")
    hostile_at = [i for i, c in enumerate(completions) if c in HOSTILE]
    with RewardRunner(["math"], num_workers=workers, timeout_s=timeout) as runner:
        runner.score(["\\boxed{1}"], answer=["1"])
        start = time.perf_counter()
        result = runner.score(completions, answer=golds)
        elapsed = time.perf_counter() - start
    scores = result.per_reward["math"]
    assert [scores[i] for i in range(len(scores)) if i not in hostile_at] == [e for _, _, e in normal]
    assert all(scores[i] in (None, 0.0) for i in hostile_at)  # never counted right
    stuck = result.timeouts["math"]
    assert stuck >= 1  # the towers really hang: the timeout path was exercised
    assert stuck == sum(scores[i] is None for i in hostile_at)
    assert result.errors["math"] == 0
    assert elapsed < timeout * math.ceil(stuck / workers) + 2.0


def test_from_config():
    runner = RewardRunner.from_config([{"name": "math", "weight": 0.9}, {"name": "format", "weight": 0.1}])
    with runner:
        assert runner.names == ["math", "format"]
        result = runner.score(["Answer: \\boxed{2}", "Answer: \\boxed{3}"], answer=["2", "2"])
    assert result.total == [pytest.approx(1.0), pytest.approx(0.1)]


def test_from_config_kwargs_and_bare_names():
    entries = [{"name": "grounding_accuracy", "kwargs": {"threshold": 0.7}}, "click"]
    with RewardRunner.from_config(entries, num_workers=0) as runner:
        # IoU of [0, 0, 100, 100] with [0, 0, 100, 60] is 0.6: a hit at 0.5, a miss at 0.7; its centre is inside
        result = runner.score(["[0, 0, 100, 100]"], bbox=[[0, 0, 100, 60]])
    assert result.per_reward == {"grounding_accuracy": [0.0], "click": [1.0]}


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ([{"name": "math", "wieght": 1.0}], "valid keys are name, weight, kwargs"),
        ([{"weight": 1.0}], "needs 'name'"),
        ([{"name": "mathh"}], "unknown reward 'mathh'"),
        ([{"name": "iou", "kwargs": {"treshold": 0.7}}], "no parameter"),
    ],
)
def test_from_config_errors(entries, fragment):
    with pytest.raises(ValueError, match=fragment):
        RewardRunner.from_config(entries)


def test_argument_errors(user_rewards):
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        RewardRunner(["format"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="listed twice"):
        RewardRunner(["format", "format"])
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner(["format"], timeout_s=0)
    with pytest.raises(ValueError, match="non-empty"):
        RewardRunner("math")
    with pytest.raises(ValueError, match="cannot be sent to a worker"):
        RewardRunner([lambda completions, **c: [1.0] * len(completions)], num_workers=1)
    with RewardRunner(["math", "format"], num_workers=1) as runner:
        with pytest.raises(ValueError, match="needs column\\(s\\) \\['answer'\\]"):
            runner.score(["x"])
        with pytest.raises(ValueError, match="column 'answer' must be a list of 2"):
            runner.score(["x", "y"], answer=["1"])


def test_in_process_mode_gives_the_same_scores(user_rewards):
    completions = ["Answer: \\boxed{4}", "Answer: \\boxed{5}"]
    with RewardRunner(["math", "format"], num_workers=0) as runner:
        result = runner.score(completions, answer=["4", "4"])
    assert result.per_reward == {"math": [1.0, 0.0], "format": [1.0, 1.0]}


def worker_pids(runner, n=8):
    return set(runner.score(["x"] * n).per_reward[f"{MODULE}:pid_reward"])


def pool_pids(runner) -> set:
    return {worker.process.pid for worker in runner._pool._workers}


def test_pool_is_persistent_and_separate(user_rewards):
    # Which workers a call reaches depends on which was ready first; the pool's own processes do not.
    with RewardRunner([f"{MODULE}:pid_reward"], num_workers=2) as runner:
        pool = pool_pids(runner)
        assert len(pool) == 2 and os.getpid() not in pool
        assert worker_pids(runner, 64) <= pool  # scored in the pool's processes, never in this one
        assert worker_pids(runner, 64) <= pool and pool_pids(runner) == pool  # no new processes between calls


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pids, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_close_and_garbage_collection_stop_the_workers(user_rewards):
    runner = RewardRunner([f"{MODULE}:pid_reward"], num_workers=2)
    pids = worker_pids(runner)
    runner.close()
    assert _wait_gone(pids)
    runner.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        runner.score(["x"])

    runner = RewardRunner([f"{MODULE}:pid_reward"], num_workers=2)
    pids = worker_pids(runner)
    del runner
    gc.collect()
    assert _wait_gone(pids)


def test_reward_that_allocates_without_bound_is_capped_and_the_rest_scored(user_rewards):
    name = f"{MODULE}:hungry_reward"
    # 128 MiB of headroom: the first 256 MiB block already fails, so the host never lends the memory.
    with RewardRunner([name], num_workers=1, memory_mb=128) as runner:
        result = runner.score(["a", "hungry", "b", "c"])
        assert result.per_reward[name] == [1.0, None, 1.0, 1.0]
        assert (result.over_memory[name], result.errors[name], result.timeouts[name]) == (1, 0, 0)
        assert result.metrics()[f"rewards/{name}/over_memory"] == 1.0
        assert runner._pool.restarts == 1  # the worker went with its heap
        assert runner.score(["d"]).per_reward[name] == [1.0]


def _spin(completions):
    """In-process and never returning on "stuck": a pure-Python loop, which only a signal interrupts."""
    if any(c == "stuck" for c in completions):
        while True:
            pass
    return [1.0] * len(completions)


def test_in_process_reward_that_hangs_times_out_and_the_rest_is_scored(caplog):
    spinning = in_process(_spin)
    timeout = 0.5
    with RewardRunner([spinning], num_workers=0, timeout_s=timeout) as runner:
        start = time.perf_counter()
        result = runner.score(["ok", "stuck", "ok"])
        elapsed = time.perf_counter() - start
    assert result.per_reward["_spin"] == [1.0, None, 1.0]
    assert (result.timeouts["_spin"], result.errors["_spin"]) == (1, 0)
    assert "timed out on completion 1" in caplog.text
    assert elapsed >= 2 * timeout  # the whole batch ran out once, then the stuck sample alone
    assert elapsed < 20 * timeout  # and nothing waited without a limit (generous bound for a loaded machine)


def test_in_process_reward_stuck_everywhere_stops_after_three_timeouts():
    spinning = in_process(_spin)
    with RewardRunner([spinning], num_workers=0, timeout_s=0.3) as runner:
        result = runner.score(["stuck"] * 6 + ["ok"])
    # One batch call + 3 samples each ran out (4 x 0.3 s); the other 3 stuck samples and the last one are skipped.
    assert result.per_reward["_spin"] == [None] * 7
    assert result.timeouts["_spin"] == 7


def test_in_process_rewards_off_the_main_thread_run_untimed_and_say_so(caplog):
    outcome = {}

    def score():
        with RewardRunner([in_process(_spin)], num_workers=0, timeout_s=0.3) as runner:
            outcome["result"] = runner.score(["ok", "ok"])

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(60)
    assert outcome["result"].per_reward["_spin"] == [1.0, 1.0]
    assert "without a time limit off the main thread" in caplog.text


def test_called_from_another_thread_after_torch_import():
    pytest.importorskip("torch")  # workers come from a forkserver, never a fork of this (torch-laden) process
    outcome = {}

    def score():
        with RewardRunner(["math"], num_workers=2) as runner:
            outcome["result"] = runner.score([boxed("\\frac{1}{2}"), boxed("0.4")], answer=["0.5", "0.5"])

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(60)
    assert outcome["result"].per_reward["math"] == [1.0, 0.0]


def test_metrics(math_format_runner):
    result = math_format_runner.score(["Answer: \\boxed{1}", "x"], answer=["1", ""])
    metrics = result.metrics()
    assert metrics["rewards/math/mean"] == 1.0  # the None (unparseable gold) is left out of the mean
    assert metrics["rewards/math/none"] == 1.0
    assert metrics["rewards/format/mean"] == 0.5
    assert metrics["rewards/total/mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["rewards/math/std"] == 0.0  # one scored value
    assert metrics["rewards/format/std"] == pytest.approx(0.5)  # values 1 and 0 around 0.5: sqrt((0.25 + 0.25) / 2)
    assert metrics["rewards/math/timeouts"] == 0.0 and metrics["rewards/math/errors"] == 0.0
