"""Hand-built RolloutRecords for the data_tools tests."""

import pytest

from cascade_rl.data_tools.records import RolloutRecord


def record(
    prompt_id="p0",
    sample_index=0,
    text="x",
    *,
    correct=False,
    parseable=True,
    answer_pred=None,
    question="q",
    images=("a.png",),
    answer="A",
    reward=None,
    n_tokens=3,
    finish_reason="stop",
):
    """A RolloutRecord with defaults; reward defaults to 1.0 if correct else 0.0."""
    return RolloutRecord(
        prompt_id=prompt_id,
        sample_index=sample_index,
        text=text,
        token_ids=list(range(n_tokens)),
        logprobs=[-0.25] * n_tokens,
        finish_reason=finish_reason,
        reward=float(correct) if reward is None else reward,
        correct=correct,
        parseable=parseable,
        answer_pred=answer_pred,
        question=question,
        images=list(images),
        answer=answer,
    )


@pytest.fixture
def make_record():
    return record
