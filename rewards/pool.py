"""Worker processes that score samples under a hard per-sample timeout enforced from outside.

Each worker has a pipe and a three-slot shared-memory ``progress`` array:

    progress[CURRENT]   index, in its chunk, of the sample the worker is scoring
    progress[STARTED]   when that sample started (``time.monotonic()``, one clock for all processes on Linux)
    progress[STOP_AT]   the worker stops its chunk before this index (the parent lowers it to take work back)

    parent -> worker    ("run", job, items)   a chunk; items are (reward_index, key, completion, columns)
                        None                  exit
    worker -> parent    ("ready",) | ("fatal", traceback)
                        ("res", job, results) results so far, flushed every FLUSH_S: [(key, value, traceback)]
                        ("done", job, results) the rest, at the end of the chunk
                        ("memory", job, index) items[index] hit the memory cap; the worker exits after sending

With ``memory_mb`` set, a worker caps its own address space (``RLIMIT_AS``) at its size when it starts plus
``memory_mb``: a sample that allocates past it raises ``MemoryError`` in the worker, which reports it and exits, so
the next sample starts on a fresh heap. The parent scores that sample "memory" and hands the rest back, as for a
timeout.

The parent reads ``progress`` to know which sample each worker is on and since when, so results travel in batches
(IPC costs one message per FLUSH_S, not one per sample). A sample still running ``timeout_s`` after it started
is a timeout: the worker is killed and replaced, the finished-but-unsent samples before it and the samples after
it go back to the front of the queue.

Chunks amortise IPC, but two stuck samples in one chunk would run one after the other. So once a sample has run
``slow_s`` (a fraction of the timeout) the parent lowers that worker's STOP_AT and hands the rest of the chunk to
other workers: stuck samples run side by side, and a batch takes at most about timeout * ceil(stuck / workers)
beyond its normal work.

Workers come from a ``forkserver`` (``spawn`` where there is none), never from forking the trainer: that works
from any thread and after torch or CUDA are initialised. The forkserver preloads and warms math-verify
(``preload.py``), so replacing a killed worker costs milliseconds, not seconds of importing sympy.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import pickle
import resource
import signal
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .contract import check_rewards

__all__ = ["WorkerPool", "Outcome"]

MAX_CHUNK = 64
FLUSH_S = 0.05
START_TIMEOUT_S = 120.0
MAX_TRACEBACK_CHARS = 20_000  # a RecursionError traceback runs to megabytes; its tail says enough
CURRENT, STARTED, STOP_AT = 0, 1, 2
_PRELOAD = ["cascade_rl.rewards.preload"]

Item = tuple[int, Any, str, dict[str, Any]]  # (reward_index, key, completion, columns of this sample)


@dataclass(frozen=True)
class Outcome:
    """What happened to one (reward, sample): ``status`` is "ok", "error", "timeout" or "memory"."""

    status: str
    value: float | None = None
    detail: str = ""


class _OverMemory(Exception):
    """The sample raised MemoryError under the worker's address-space cap."""


def _score_one(fn: Callable, completion: str, columns: dict[str, Any]) -> tuple[float | None, str | None]:
    try:
        values = fn([completion], **{name: [value] for name, value in columns.items()})
        return check_rewards(values, 1)[0], None
    except MemoryError:
        raise _OverMemory from None
    except Exception:
        return None, traceback.format_exc()[-MAX_TRACEBACK_CHARS:]


def _cap_memory(memory_mb: float | None) -> None:
    """Limit this process's address space to its current size plus ``memory_mb`` MiB (Linux; no-op for None)."""
    if memory_mb is None:
        return
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    limit = size + int(memory_mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _worker_main(conn: Connection, payload: bytes, progress: Any, memory_mb: float | None) -> None:
    """Worker loop: load the reward functions once, then score chunks one sample at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer, which then stops the pool
    try:
        rewards = pickle.loads(payload)
        _cap_memory(memory_mb)
    except BaseException:
        conn.send(("fatal", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        _, job, items = message
        try:
            _run_chunk(conn, job, items, rewards, progress)
        except _OverMemory:
            conn.send(("memory", job, int(progress[CURRENT])))
            return


def _run_chunk(conn: Connection, job: int, items: list[Item], rewards: list[Callable], progress: Any) -> None:
    results: list[tuple[Any, float | None, str | None]] = []
    flushed_at = time.monotonic()
    for index, (reward_index, key, completion, columns) in enumerate(items):
        if index >= progress[STOP_AT]:
            break
        progress[STARTED] = time.monotonic()
        progress[CURRENT] = index  # written after STARTED: whoever sees the new index sees its start time
        try:
            value, error = _score_one(rewards[reward_index], completion, columns)
        except _OverMemory:
            conn.send(("res", job, results))  # the samples before it are done
            raise
        results.append((key, value, error))
        # The chunk's last results always travel with "done", so a finished chunk is never left half-reported.
        if index + 1 < min(len(items), progress[STOP_AT]) and time.monotonic() - flushed_at >= FLUSH_S:
            conn.send(("res", job, results))
            results, flushed_at = [], time.monotonic()
    conn.send(("done", job, results))


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Takes effect when the forkserver starts; if another library started it first, workers import
        # math-verify themselves on first use, which is slower but just as correct.
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    progress: Any
    ready: bool = False
    job: int | None = None
    items: list[Item] = field(default_factory=list)
    reported: int = 0  # results received for items[:reported]

    def current(self) -> tuple[int, float]:
        """(index of the sample in progress, when it started)."""
        index = int(self.progress[CURRENT])
        return index, self.progress[STARTED]


def _stop(workers: list[_Worker], grace_s: float = 1.0) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace_s
    for worker in workers:
        if worker.job is None:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
    workers.clear()


class WorkerPool:
    """``num_workers`` persistent processes running ``rewards`` (picklable functions) under a hard timeout and, with
    ``memory_mb``, an address-space cap."""

    def __init__(
        self, rewards: Sequence[Callable], num_workers: int, timeout_s: float, memory_mb: float | None = None
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self._payload = pickle.dumps(list(rewards))
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.slow_s = min(1.0, timeout_s / 4)
        self.restarts = 0
        self._ctx = _context()
        self._jobs = itertools.count()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        for _ in range(num_workers):
            self._workers.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        progress = self._ctx.RawArray("d", 3)
        args = (child_end, self._payload, progress, self.memory_mb)
        process = self._ctx.Process(target=_worker_main, args=args, daemon=True)
        process.start()
        child_end.close()
        return _Worker(process=process, conn=parent_end, progress=progress)

    def _replace(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._start_worker()
        self.restarts += 1

    def close(self) -> None:
        self._finalizer()

    def run(self, items: Sequence[Item]) -> dict[Any, Outcome]:
        """Score every item; the outcome of each, by key. Never waits on a sample longer than ``timeout_s``."""
        if not self._finalizer.alive:
            raise RuntimeError("this WorkerPool is closed")
        queue: deque[Item] = deque(items)
        outcomes: dict[Any, Outcome] = {}
        try:
            while len(outcomes) < len(items):
                self._dispatch(queue, outcomes)
                self._wait(queue, outcomes)
        finally:
            # A worker still busy now holds a stale chunk: the batch was interrupted, or it is on a sample that
            # another worker finished first. Its results would carry this batch's keys into the next one.
            for worker in list(self._workers):
                if worker.job is not None:
                    self._replace(worker)
        return outcomes

    def _dispatch(self, queue: deque[Item], outcomes: dict[Any, Outcome]) -> None:
        for worker in self._workers:
            if not worker.ready or worker.job is not None:
                continue
            size = max(1, min(MAX_CHUNK, math.ceil(len(queue) / (2 * self.num_workers))))
            chunk: list[Item] = []
            while queue and len(chunk) < size:
                item = queue.popleft()
                if item[1] not in outcomes:  # a sample handed back can still be finished by its first worker
                    chunk.append(item)
            if not chunk:
                return
            worker.job, worker.items, worker.reported = next(self._jobs), chunk, 0
            # The worker is idle, so nothing races these writes.
            worker.progress[STOP_AT], worker.progress[CURRENT] = len(chunk), 0
            worker.progress[STARTED] = time.monotonic()
            worker.conn.send(("run", worker.job, chunk))

    def _next_event(self, now: float) -> float:
        """Seconds until the earliest timeout or slow-sample check (START_TIMEOUT_S if nothing is running)."""
        event = now + START_TIMEOUT_S
        for worker in self._workers:
            if worker.job is not None:
                index, started = worker.current()
                event = min(event, started + self.timeout_s)
                if index + 1 < worker.progress[STOP_AT]:
                    event = min(event, started + self.slow_s)
        return max(0.0, event - now)

    def _wait(self, queue: deque[Item], outcomes: dict[Any, Outcome]) -> None:
        waited_from = time.monotonic()
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(wait(handles, timeout=self._next_event(waited_from)))
        for worker in list(self._workers):
            alive = True
            if worker.conn in ready:
                alive = self._drain(worker, queue, outcomes)
            if not alive or (worker.process.sentinel in ready and not worker.conn.poll()):
                self._on_death(worker, queue, outcomes)
        self._check_clocks(queue, outcomes)
        if not any(w.ready for w in self._workers) and time.monotonic() - waited_from >= START_TIMEOUT_S:
            raise RuntimeError(f"no reward worker became ready within {START_TIMEOUT_S:.0f} s")

    def _drain(self, worker: _Worker, queue: deque[Item], outcomes: dict[Any, Outcome]) -> bool:
        """Handle every message waiting from ``worker``; False if its pipe is closed (the process died)."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                kind = message[0]
                if kind == "ready":
                    worker.ready = True
                elif kind == "fatal":
                    raise RuntimeError(f"a reward worker could not load the reward functions:\n{message[1]}")
                elif kind == "memory" and message[1] == worker.job:
                    detail = f"allocated past the worker's cap of {self.memory_mb:g} MiB; the worker was replaced"
                    self._hand_back(worker, queue, outcomes, message[2], Outcome("memory", None, detail))
                    worker.job, worker.items = None, []
                    return False  # it exits: _on_death replaces it
                elif message[1] == worker.job:  # "res" or "done"
                    for key, value, error in message[2]:
                        if key not in outcomes:
                            outcomes[key] = Outcome("error", None, error) if error else Outcome("ok", value)
                    worker.reported += len(message[2])
                    if kind == "done":
                        worker.job, worker.items = None, []
        except (EOFError, OSError):
            return False
        return True

    def _hand_back(
        self, worker: _Worker, queue: deque[Item], outcomes: dict[Any, Outcome], failed: int | None, outcome: Outcome
    ) -> None:
        """Record ``outcome`` for items[failed] (if any); requeue the worker's other unfinished items up front."""
        items, stop_at = worker.items, int(worker.progress[STOP_AT])
        if failed is None:
            rest = items[worker.reported : stop_at]
        else:
            outcomes.setdefault(items[failed][1], outcome)
            rest = items[worker.reported : min(failed, stop_at)] + items[failed + 1 : stop_at]
        queue.extendleft(reversed([item for item in rest if item[1] not in outcomes]))

    def _on_death(self, worker: _Worker, queue: deque[Item], outcomes: dict[Any, Outcome]) -> None:
        worker.process.join(1.0)
        code = worker.process.exitcode
        if not worker.ready:
            raise RuntimeError(
                f"a reward worker exited with code {code} before it was ready. Workers start from a forkserver, which "
                "re-imports the main module: in a script, create the RewardRunner under `if __name__ == '__main__':`"
            )
        if worker.job is not None:
            detail = f"the worker process died (exit code {code}) while scoring this sample"
            index = worker.current()[0]
            failed = index if index < len(worker.items) else None
            self._hand_back(worker, queue, outcomes, failed, Outcome("error", None, detail))
        self._replace(worker)

    def _check_clocks(self, queue: deque[Item], outcomes: dict[Any, Outcome]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.job is None:
                continue
            index, started = worker.current()
            if now - started >= self.timeout_s:
                worker.process.kill()
                worker.process.join()
                # If it moved on between the read and the kill, that sample was not stuck: requeue, blame nothing.
                failed = index if worker.current()[0] == index and index < len(worker.items) else None
                detail = f"no result after {self.timeout_s:g} s; the worker was killed and replaced"
                self._hand_back(worker, queue, outcomes, failed, Outcome("timeout", None, detail))
                self._replace(worker)
            elif now - started >= self.slow_s and index + 1 < worker.progress[STOP_AT]:
                # Take back the samples it has not started; if it already moved on to index + 1, that one is
                # scored twice and the first result wins.
                taken = worker.items[index + 1 : int(worker.progress[STOP_AT])]
                worker.progress[STOP_AT] = index + 1
                queue.extendleft(reversed(taken))
