"""Turn a PromptRow into the rollout engines' RolloutRequest (messages + loaded images + columns)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cascade_rl.data.images import load_images
from cascade_rl.data.rows import PromptRow

if TYPE_CHECKING:
    from cascade_rl.rollout.base import RolloutRequest


def row_to_request(
    row: PromptRow, image_root: str | os.PathLike | None, *, system_prompt: str | None = None
) -> RolloutRequest:
    """RolloutRequest(prompt_id=row.id, messages=row.to_messages(system_prompt), images=RGB images, meta=columns).

    `meta` carries the dataset columns (question, images, answer, extra columns) untouched, for scoring.
    """
    from cascade_rl.rollout.base import RolloutRequest  # lazily: the rollout package loads torch and the engines

    return RolloutRequest(
        prompt_id=row.id,
        messages=row.to_messages(system_prompt),
        images=load_images(row, image_root),
        meta=row.columns(),
    )
