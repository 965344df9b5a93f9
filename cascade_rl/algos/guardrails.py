"""Settings that make GSPO a different algorithm without any error: refuse or warn, and say why (DESIGN peer
complaint 2). Tensor-free, so a config's `__post_init__` can run them before anything is built."""

from __future__ import annotations

import warnings

from cascade_rl.algos.aggregation import check_aggregation
from cascade_rl.algos.checks import check_clip_range

GSPO_AGGREGATION = "seq-mean-token-mean"
# A clip half-width this large is GRPO-scale: GSPO's sequence ratio is a geometric mean of token ratios and moves
# by ~1e-3 per step, so a 0.2 window almost never clips.
GSPO_LARGE_CLIP = 0.05


def check_gspo_settings(*, aggregation: str, clip_low: float, clip_high: float) -> None:
    """Refuse any aggregation but seq-mean-token-mean; warn on GRPO-scale clip ranges."""
    check_aggregation(aggregation)
    check_clip_range(clip_low, clip_high)
    if aggregation == "token-sum":
        raise ValueError(
            "GSPO refuses aggregation='token-sum': summing token losses weights each sequence by its length "
            "(and the loss by the batch's token count), which is exactly what GSPO's length-normalised sequence "
            f"ratio exists to remove. GSPO uses {GSPO_AGGREGATION!r} (one term per sequence, mean over sequences)."
        )
    if aggregation != GSPO_AGGREGATION:
        raise ValueError(
            f"GSPO refuses aggregation={aggregation!r}: its objective is (1/G) Σ_i of one clipped term per "
            f"sequence, i.e. {GSPO_AGGREGATION!r}; other modes weight sequences by their length. The released "
            "InternVL/verl code forces this mode whatever loss_agg_mode says."
        )
    if max(clip_low, clip_high) >= GSPO_LARGE_CLIP:
        warnings.warn(
            f"GSPO with clip_low={clip_low}, clip_high={clip_high}: this is a GRPO-scale clip range. The GSPO paper "
            "uses 3e-4 / 4e-4 because the sequence ratio is a per-token geometric mean that barely moves; with "
            "0.2 clipping almost never triggers. InternVL3.5's released online recipe did run with verl's default "
            "0.2 / 0.2, so keep it only if you mean to reproduce that recipe.",
            UserWarning,
            stacklevel=3,
        )
