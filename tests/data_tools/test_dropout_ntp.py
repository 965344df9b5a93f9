"""DropoutNTP with a fake continue_fn: prefix rule, image-free prompt, pair rows, skips."""

import pytest

from cascade_rl.data_tools.dropout_ntp import dropout_ntp_pairs, truncate_words


class FakeContinuer:
    """Records what it was asked and continues every prefix with a fixed text."""

    def __init__(self, continuation=" and so the answer is 7."):
        self.continuation = continuation
        self.calls = []

    def __call__(self, messages, prefix):
        self.calls.append((messages, prefix))
        return self.continuation


def test_truncate_words_follows_internvl():
    assert truncate_words("a b c d e", 0.5) == "a b"  # int(5 * 0.5) = 2 words
    assert truncate_words("a b c d", 0.5) == "a b"
    assert truncate_words("one", 0.5) == ""
    # split on single spaces: the newline stays inside a "word", so the prefix keeps its layout
    text = "Step 1: add.\nStep 2: sum is 4.\nAnswer: 4"  # 8 space-separated words
    assert truncate_words(text, 0.5) == "Step 1: add.\nStep 2:"
    assert truncate_words(text, 0.25) == "Step 1:"


def test_pair_from_a_single_image_row():
    fake = FakeContinuer()
    rows = [
        {"question": "<image>\nHow many apples?", "image": "fruit.png", "response": "There are three apples here."}
    ]
    pairs, summary = dropout_ntp_pairs(rows, fake)
    # 5 words -> the first 2; the continuation is appended as is
    assert fake.calls == [
        ([{"role": "user", "content": [{"type": "text", "text": "How many apples?"}]}], "There are"),
    ]
    assert pairs == [
        {
            "image": "fruit.png",
            "question": "<image>\nHow many apples?",
            "chosen": "There are three apples here.",
            "rejected": "There are and so the answer is 7.",
            "answer_gt": None,
            "chosen_meta": {"source": "dropout_ntp"},
            "rejected_meta": {"source": "dropout_ntp", "start_ratio": 0.5, "prefix": "There are"},
        }
    ]
    assert summary.as_dict() == {"n_rows": 1, "n_pairs": 1, "empty_response": 0, "identical": 0}


def test_records_multi_image_system_prompt_and_placeholders(make_record):
    record = make_record("p", 0, "one two three four", question="Which is bigger?", images=["a.png", "b.png"])
    fake = FakeContinuer(" five")
    pairs, _ = dropout_ntp_pairs([record], fake, start_ratio=0.75, system_prompt="sys")
    messages, prefix = fake.calls[0]
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "sys"}]}
    assert messages[1]["content"] == [{"type": "text", "text": "Which is bigger?"}]  # no image parts
    assert prefix == "one two three"  # int(4 * 0.75) = 3
    assert pairs[0]["image"] == ["a.png", "b.png"]
    assert pairs[0]["question"] == "Image-1: <image>\nImage-2: <image>\nWhich is bigger?"
    assert (pairs[0]["rejected"], pairs[0]["answer_gt"]) == ("one two three five", "A")


def test_placeholders_are_stripped_from_the_image_free_prompt():
    fake = FakeContinuer()
    dropout_ntp_pairs([{"question": "Image-1: <image>\nImage-2: <image>\nSame?", "chosen": "Yes they are."}], fake)
    assert fake.calls[0][0][-1]["content"][0]["text"] == "Image-1: \nImage-2: \nSame?"


def test_empty_is_skipped_and_identical_is_kept_as_internvl_does_both_counted():
    rows = [
        {"question": "q", "response": "   "},
        {"question": "q", "response": "alpha beta gamma delta"},  # the fake rebuilds it exactly
        {"question": "q", "response": "alpha beta"},
    ]
    pairs, summary = dropout_ntp_pairs(rows, FakeContinuer(" gamma delta"))
    assert [p["rejected"] for p in pairs] == ["alpha beta gamma delta", "alpha gamma delta"]
    assert summary.as_dict() == {"n_rows": 3, "n_pairs": 2, "empty_response": 1, "identical": 1}


def test_start_ratio_must_be_a_fraction():
    with pytest.raises(ValueError, match=r"start_ratio must be in \(0, 1\)"):
        dropout_ntp_pairs([], FakeContinuer(), start_ratio=1.0)
