"""The reward contract, ``fn(completions: list[str], **columns) -> list[float | None]``, and its checks."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["RewardFn", "in_process", "runs_in_process", "check_rewards", "column_names"]


class RewardFn(Protocol):
    """TRL's reward contract: one value per completion; ``None`` means "does not apply" to that completion."""

    def __call__(self, completions: list[str], **columns: list) -> list[float | None]: ...


F = TypeVar("F", bound=Callable)


def in_process(fn: F) -> F:
    """Mark a reward as cheap and trusted: ``RewardRunner`` calls it in its own process, without a timeout.

    Only for linear-time code that cannot hang (regexes without backtracking, arithmetic); everything else runs in a
    worker process under the hard timeout.
    """
    fn.in_process = True  # type: ignore[attr-defined]
    return fn


def runs_in_process(fn: Callable) -> bool:
    return getattr(fn, "in_process", False) is True


def check_rewards(values: object, n: int) -> list[float | None]:
    """``values`` as a list of ``n`` finite floats or None; raises ``ValueError`` saying what is wrong."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != n:  # type: ignore[arg-type]
        got = len(values) if hasattr(values, "__len__") else type(values).__name__  # type: ignore[arg-type]
        raise ValueError(f"a reward must return a list of {n} values (one per completion), got {got}")
    checked: list[float | None] = []
    for value in values:  # type: ignore[attr-defined]
        if value is None:
            checked.append(None)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"a reward value must be a number or None, got {type(value).__name__}") from None
        if not math.isfinite(number):
            raise ValueError(f"a reward value must be finite, got {number}")
        checked.append(number)
    return checked


def column_names(fn: Callable) -> tuple[set[str] | None, set[str]]:
    """(columns ``fn`` reads, or None for all of them; columns it requires).

    The first parameter is the completions; required columns are the other parameters without a default. A
    ``**columns`` catch-all means the function may read any column, so RewardRunner ships it every column; name
    the catch-all ``**_`` (as the built-ins do) to say it only absorbs the columns it ignores.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return None, set()
    accepted: set[str] | None = set()
    required: set[str] = set()
    for param in params[1:]:
        if param.kind is param.VAR_KEYWORD:
            if not param.name.startswith("_"):
                accepted = None
        elif param.kind is not param.VAR_POSITIONAL:
            if accepted is not None:
                accepted.add(param.name)
            if param.default is param.empty:
                required.add(param.name)
    return accepted, required
