"""Rewards that fail on purpose, for tests/test_bad_input.py: each scores 1.0, except on completions of the prompt
whose answer is "1", where it fails its own way. Module level, so reward worker processes can import it."""

import time


def _fails(answer) -> bool:
    return answer == "1"


def raising(completions, answer, **columns):
    if any(_fails(a) for a in answer):
        raise ValueError("this reward raises on purpose")
    return [1.0] * len(completions)


def hanging(completions, answer, **columns):
    while any(_fails(a) for a in answer):
        time.sleep(60)
    return [1.0] * len(completions)


def nan(completions, answer, **columns):
    return [float("nan") if _fails(a) else 1.0 for a in answer]


def wrong_length(completions, answer, **columns):
    return [1.0] * (len(completions) + any(_fails(a) for a in answer))


def allocating(completions, answer, **columns):
    """Allocates without bound (address space in 256 MiB blocks; the cap stops the first one)."""
    blocks = []
    while any(_fails(a) for a in answer):
        blocks.append(bytearray(256 * 2**20))
    return [1.0] * len(completions)
