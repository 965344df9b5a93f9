"""A time limit for rewards that run in the trainer's own process (``@in_process``), from ``SIGALRM``.

Python checks for signals between bytecodes and inside long C loops that poll for them (``re`` matching does), so a
hung regex or a runaway Python loop is interrupted; a C call that never polls is not. Signals reach only the main
thread, so off it (or when another library already owns ``SIGALRM``) the limit cannot be set and ``time_limit``
says so by returning False.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RewardTimeout", "can_time_limit", "time_limit"]


class RewardTimeout(BaseException):
    """An in-process reward ran past its time limit (a BaseException, so a reward's own ``except Exception`` cannot
    swallow it)."""


def can_time_limit() -> bool:
    """True on the main thread when nobody else handles ``SIGALRM`` (the only case where ``time_limit`` works)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return False
    return signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None, _raise_timeout)


def _raise_timeout(signum: int, frame: object) -> None:
    raise RewardTimeout


@contextmanager
def time_limit(seconds: float) -> Iterator[bool]:
    """Raise ``RewardTimeout`` in the block once it has run ``seconds``; yields whether the limit is armed."""
    if not can_time_limit():
        yield False
        return
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
