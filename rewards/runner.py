"""``RewardRunner``: score a batch with several weighted rewards, isolated, in parallel, and never hang.

How the pieces fit:
- each reward is a name (built-in or plugin), a ``"package.module:function"`` path, or a picklable function;
- rewards marked ``@in_process`` (the cheap built-ins) are called on the whole batch in this process;
- every other reward runs in a ``WorkerPool`` (``pool.py``), one sample at a time, under a hard timeout and an
  address-space cap (``memory_mb``): a sample that allocates past it gets its worker replaced;
- in-process rewards run under the same timeout, from ``SIGALRM`` (``alarm.py``; main thread only);
- an exception, a timeout or a sample over the memory cap scores that sample None for that reward, is counted, and
  is logged once per reward and kind.

``total`` is the weighted sum of the rewards that returned a value; a None (does not apply, error, timeout)
contributes nothing, and ``total`` is None only when every reward is None for that completion.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .alarm import RewardTimeout, can_time_limit, time_limit
from .contract import check_rewards, column_names, runs_in_process
from .pool import Outcome, WorkerPool
from .registry import check_reward_kwargs, get_reward

__all__ = ["RewardRunner", "RewardResult"]

logger = logging.getLogger(__name__)

_CONFIG_KEYS = ("name", "weight", "kwargs")
_COUNTED = {"timeout": "timeouts", "error": "errors", "memory": "over_memory"}  # Outcome.status -> RewardResult field
MAX_IN_PROCESS_TIMEOUTS = 3


@dataclass
class RewardResult:
    """Scores of one batch, in input order.

    ``total[i]``: weighted sum over the rewards that scored completion i (None if none did).
    ``per_reward[name][i]``: each reward's own value. ``timeouts`` / ``errors`` / ``over_memory``: per reward, how
    many completions timed out, raised, or allocated past the worker's memory cap (those score None, unlike wrong
    answers, which score 0).
    """

    total: list[float | None]
    per_reward: dict[str, list[float | None]]
    timeouts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    over_memory: dict[str, int] = field(default_factory=dict)

    def failures(self) -> dict[str, dict[str, int]]:
        """{reward: {"timeouts"|"errors"|"over_memory": count}} for the rewards that failed on some completion."""
        out: dict[str, dict[str, int]] = {}
        for kind in _COUNTED.values():
            for name, count in getattr(self, kind).items():
                if count:
                    out.setdefault(name, {})[kind] = count
        return out

    def metrics(self, prefix: str = "rewards/") -> dict[str, float]:
        """Flat scalars for a logger: mean and (population) std of each reward over its non-None values,
        None/timeout/error/over-memory counts."""
        out: dict[str, float] = {}
        for name, values in [("total", self.total), *self.per_reward.items()]:
            scored = [v for v in values if v is not None]
            mean = sum(scored) / len(scored) if scored else math.nan
            out[f"{prefix}{name}/mean"] = mean
            out[f"{prefix}{name}/std"] = (
                math.sqrt(sum((v - mean) ** 2 for v in scored) / len(scored)) if scored else math.nan
            )
            out[f"{prefix}{name}/none"] = float(len(values) - len(scored))
        for name in self.per_reward:
            out[f"{prefix}{name}/timeouts"] = float(self.timeouts.get(name, 0))
            out[f"{prefix}{name}/errors"] = float(self.errors.get(name, 0))
            out[f"{prefix}{name}/over_memory"] = float(self.over_memory.get(name, 0))
        return out


@dataclass(frozen=True)
class _Reward:
    name: str
    fn: Callable
    weight: float
    in_process: bool
    accepted: set[str] | None  # columns the function takes; None = all (**columns)
    required: set[str]


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _resolve(spec: str | Callable) -> tuple[str, Callable]:
    if isinstance(spec, str):
        return spec, get_reward(spec)
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    raise TypeError(f"a reward is a name, a 'module:function' path or a function, got {type(spec).__name__}")


class RewardRunner:
    """Runs rewards on batches of completions, with weights, process isolation and a hard per-sample timeout.

    Args:
        rewards: names (``"math"``), ``"package.module:function"`` paths, or module-level functions.
        weights: one per reward (default 1.0 each).
        timeout_s: the longest any one completion may take in one reward (isolated, or in-process on the main
            thread).
        memory_mb: how much memory a worker may allocate beyond its size at start (an address-space limit); a
            sample that needs more scores None and its worker is replaced. None: no cap.
        num_workers: worker processes (default: the usable CPU cores). 0 runs everything in this process (time limit
            from SIGALRM on the main thread, no memory cap): for debugging only.

    >>> with RewardRunner(["format"]) as runner:
    ...     runner.score(["Answer: \\\\boxed{1}", "1"]).total
    [1.0, 0.0]
    """

    def __init__(
        self,
        rewards: Sequence[str | Callable],
        *,
        weights: Sequence[float] | None = None,
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        memory_mb: float | None = 2048,
    ) -> None:
        if isinstance(rewards, (str, bytes)) or not rewards:
            raise ValueError(f"rewards must be a non-empty list of names or functions, got {rewards!r}")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ValueError(f"got {len(weights)} weights for {len(rewards)} rewards")
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite numbers, got {weights}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        if memory_mb is not None and not (memory_mb > 0 and math.isfinite(memory_mb)):
            raise ValueError(f"memory_mb must be a positive number of MiB or None, got {memory_mb}")
        num_workers = _default_workers() if num_workers is None else num_workers
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")

        self.timeout_s = timeout_s
        self._rewards: list[_Reward] = []
        for spec, weight in zip(rewards, weights):
            name, fn = _resolve(spec)
            if name in {r.name for r in self._rewards}:
                raise ValueError(f"reward {name!r} is listed twice")
            accepted, required = column_names(fn)
            isolated = not runs_in_process(fn) and num_workers > 0
            self._rewards.append(_Reward(name, fn, weight, not isolated, accepted, required))
        self._isolated = [i for i, r in enumerate(self._rewards) if not r.in_process]
        for i in self._isolated:
            try:
                pickle.dumps(self._rewards[i].fn)
            except Exception as e:
                raise ValueError(
                    f"reward {self._rewards[i].name!r} cannot be sent to a worker process ({e}); define it at module "
                    "level (not a lambda or a closure) or name it as 'package.module:function'"
                ) from e
        self._pool = None
        if self._isolated:
            fns = [self._rewards[i].fn for i in self._isolated]
            self._pool = WorkerPool(fns, num_workers, timeout_s, memory_mb=memory_mb)
        self._lock = threading.Lock()
        self._logged: set[object] = set()

    @classmethod
    def from_config(cls, entries: Sequence[Mapping[str, Any] | str], **runner_kwargs: Any) -> RewardRunner:
        """Build from the YAML list form ``[{name: math, weight: 0.9}, {name: format, weight: 0.1}]``.

        An entry may also carry ``kwargs`` (a mapping bound to the function, e.g. ``{threshold: 0.7}``), or be a
        bare name (weight 1.0). ``runner_kwargs`` go to the constructor (``timeout_s``, ``num_workers``).
        """
        specs: list[str | Callable] = []
        weights: list[float] = []
        for position, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"name": entry}
            unknown = set(entry) - set(_CONFIG_KEYS)
            if unknown or "name" not in entry:
                raise ValueError(
                    f"rewards[{position}] = {dict(entry)!r}: needs 'name'; valid keys are {', '.join(_CONFIG_KEYS)}"
                )
            kwargs = entry.get("kwargs") or {}
            specs.append(_Bound(entry["name"], get_reward(entry["name"]), dict(kwargs)) if kwargs else entry["name"])
            weights.append(float(entry.get("weight", 1.0)))
        return cls(specs, weights=weights, **runner_kwargs)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self._rewards]

    def score(self, completions: Sequence[str], **columns: Sequence[Any]) -> RewardResult:
        """Score ``completions`` with every reward; ``columns`` are dataset columns, one list entry per completion."""
        completions = list(completions)
        n = len(completions)
        for name, values in columns.items():
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != n:
                got = len(values) if hasattr(values, "__len__") else type(values).__name__
                raise ValueError(f"column {name!r} must be a list of {n} values (one per completion), got {got}")
        for reward in self._rewards:
            missing = reward.required - set(columns)
            if missing:
                raise ValueError(
                    f"reward {reward.name!r} needs column(s) {sorted(missing)}; columns given: {sorted(columns)}"
                )
        with self._lock:
            return self._score(completions, {k: list(v) for k, v in columns.items()})

    def _score(self, completions: list[str], columns: dict[str, list[Any]]) -> RewardResult:
        n = len(completions)
        per_reward: dict[str, list[float | None]] = {}
        counts = {field_name: {r.name: 0 for r in self._rewards} for field_name in _COUNTED.values()}
        if any(r.in_process for r in self._rewards) and not can_time_limit():
            self._warn_once("untimed", "in-process rewards run without a time limit off the main thread")
        for reward in self._rewards:
            if reward.in_process:
                per_reward[reward.name] = self._score_in_process(reward, completions, columns, counts)
        if self._pool is not None and n:
            items = []
            for slot, index in enumerate(self._isolated):
                reward = self._rewards[index]
                names = columns.keys() if reward.accepted is None else reward.accepted & columns.keys()
                for i, completion in enumerate(completions):
                    items.append((slot, (index, i), completion, {c: columns[c][i] for c in names}))
            outcomes = self._pool.run(items)
            for index in self._isolated:
                reward = self._rewards[index]
                values: list[float | None] = []
                for i in range(n):
                    outcome = outcomes[(index, i)]
                    values.append(outcome.value)
                    if outcome.status != "ok":
                        counts[_COUNTED[outcome.status]][reward.name] += 1
                        self._log_once(reward.name, i, outcome)
                per_reward[reward.name] = values
        per_reward = {r.name: per_reward.get(r.name, []) for r in self._rewards}  # listed order
        total = [self._combine(i, per_reward) for i in range(n)]
        return RewardResult(total, per_reward, **counts)

    def _combine(self, i: int, per_reward: dict[str, list[float | None]]) -> float | None:
        scored = [(r.weight, per_reward[r.name][i]) for r in self._rewards if per_reward[r.name][i] is not None]
        return sum(w * v for w, v in scored) if scored else None  # type: ignore[operator]

    def _score_in_process(
        self,
        reward: _Reward,
        completions: list[str],
        columns: dict[str, list[Any]],
        counts: dict[str, dict[str, int]],
    ) -> list[float | None]:
        """The whole batch in one call under ``timeout_s``; if that raises or runs out, one sample at a time, each
        under ``timeout_s``. After ``MAX_IN_PROCESS_TIMEOUTS`` timeouts the rest of the batch scores None (counted as
        timeouts): a batch never costs more than about (1 + MAX_IN_PROCESS_TIMEOUTS) x ``timeout_s``."""
        names = columns.keys() if reward.accepted is None else reward.accepted & columns.keys()
        try:
            with time_limit(self.timeout_s):
                return check_rewards(reward.fn(completions, **{c: columns[c] for c in names}), len(completions))
        except (Exception, RewardTimeout):
            pass  # find the offending completions one by one
        values: list[float | None] = []
        for i, completion in enumerate(completions):
            value, outcome = None, None
            if counts["timeouts"][reward.name] >= MAX_IN_PROCESS_TIMEOUTS:
                outcome = Outcome("timeout", None, f"skipped after {MAX_IN_PROCESS_TIMEOUTS} timeouts in this batch")
            else:
                try:
                    with time_limit(self.timeout_s):
                        value = check_rewards(reward.fn([completion], **{c: [columns[c][i]] for c in names}), 1)[0]
                except RewardTimeout:
                    outcome = Outcome("timeout", None, f"no result after {self.timeout_s:g} s (in-process reward)")
                except Exception:
                    outcome = Outcome("error", None, traceback.format_exc())
            if outcome is not None:
                counts[_COUNTED[outcome.status]][reward.name] += 1
                self._log_once(reward.name, i, outcome)
            values.append(value)
        return values

    def _log_once(self, name: str, index: int, outcome: Outcome) -> None:
        """Log the first error, timeout and over-memory sample of each reward; later ones are only counted."""
        kind = _COUNTED[outcome.status]
        what = {"timeouts": "timed out", "errors": "failed", "over_memory": "went over the worker's memory cap"}[kind]
        self._warn_once(
            (name, kind),
            "reward %r %s on completion %d of the batch; it scores None there and training goes on. Later %s of this "
            "reward are counted in RewardResult.%s, not logged.\n%s",
            name,
            what,
            index,
            kind,
            kind,
            outcome.detail,
        )

    def _warn_once(self, key: object, message: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(message, *args)

    def close(self) -> None:
        """Stop the worker processes (also done at garbage collection and interpreter exit)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bound:
    """A reward with fixed keyword arguments from the YAML ``kwargs`` key; picklable, unlike a lambda."""

    def __init__(self, name: str, fn: Callable, kwargs: dict[str, Any]) -> None:
        check_reward_kwargs(name, fn, kwargs)
        signature = inspect.signature(fn)
        self.__name__ = name
        self.fn, self.kwargs = fn, kwargs
        self.in_process = runs_in_process(fn)
        # RewardRunner reads the columns a reward needs from its signature: the bound arguments are not columns.
        params = [p for n, p in signature.parameters.items() if n not in kwargs]
        self.__signature__ = signature.replace(parameters=params)

    def __call__(self, completions: list[str], **columns: Any) -> list[float | None]:
        return self.fn(completions, **columns, **self.kwargs)
