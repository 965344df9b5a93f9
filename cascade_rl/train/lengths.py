"""The over-long rule shared by the trainers: a sequence is never truncated (that could cut inside an image and
break the image-token / image-feature match); an over-long row is dropped and counted, or refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from cascade_rl.data import DataError


@dataclass
class LoadSummary:
    """Counts from loading one training file: rows read, rows kept, over-long rows dropped (and their lines)."""

    rows: int = 0
    kept: int = 0
    dropped_overlong: int = 0
    dropped_lines: list[str] = field(default_factory=list)


def admit(summary, source: str, num_tokens: int, *, max_length: int, on_overlong: str, what: str) -> bool:
    """True when `num_tokens` ≤ max_length. Otherwise raise (on_overlong="raise") a DataError naming `source`, or
    count the drop in `summary.dropped_overlong` / `summary.dropped_lines` and return False."""
    if num_tokens <= max_length:
        return True
    if on_overlong == "raise":
        raise DataError(
            f"{source}: {what} is {num_tokens} tokens, over max_length={max_length}; raise max_length, "
            "lower max_tiles, or set on_overlong=drop",
            reason="overlong",
        )
    summary.dropped_overlong += 1
    summary.dropped_lines.append(source)
    return False
