"""InternVL's prompt instruction (`en_v2`) on hand-made questions: exact text out."""

import pytest

from cascade_rl.data.prompting import with_prompt_instruction

# INSTRUCTION_BOXED_EN after its '{question}\n', copied by hand from OpenGVLab/InternVL (2410d1d)
# internvl_chat/tools/reasoning_data_pipeline/utils/constants.py (note the em dash after "indefinitely").
BOXED = (
    "\nAnswer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion based on the "
    "reasoning provided. If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely\u2014provide your best guess even if unsure. Think "
    "step by step logically, considering all relevant information before answering."
)

# (question, images, expected), each derived by following mmpr_data_pipeline_correctness.py's
# VQADataset.multi_modal_get_item / pure_text_get_item by hand: cut a VALID_INSTRUCTIONS suffix and .strip(), put the
# rest into INSTRUCTION_BOXED_EN; with exactly one <image>, remove it ('<image>\n' first) and prepend '<image>\n'.
CASES = [
    (  # the VQA suffix goes, the image stays in front
        "<image>\nWhat color is the car?\nAnswer the question using a single word or phrase.",
        1,
        "<image>\nWhat color is the car?" + BOXED,
    ),
    (  # multiple choice: the letter suffix goes; the options stay
        "<image>\nWhich shape is largest?\nA. circle\nB. square\n"
        "Answer with the option's letter from the given choices directly.",
        1,
        "<image>\nWhich shape is largest?\nA. circle\nB. square" + BOXED,
    ),
    (  # a placeholder inside the text moves to the front; the text keeps the space on each side of it
        "Look at <image> and count the dots. Please answer Yes or No.",
        1,
        "<image>\nLook at  and count the dots." + BOXED,
    ),
    (  # no placeholder: InternVL prepends one
        "How many squares?",
        1,
        "<image>\nHow many squares?" + BOXED,
    ),
    (  # text only; an earlier boxed request is replaced by InternVL's own
        "What is 2 + 3? Please answer the question and put the final answer within \\boxed{}.",
        0,
        "What is 2 + 3?" + BOXED,
    ),
    (  # several images keep their placeholders where they are
        "Image-1: <image>\nImage-2: <image>\nWhich image has more circles?",
        2,
        "Image-1: <image>\nImage-2: <image>\nWhich image has more circles?" + BOXED,
    ),
    (  # a suffix that is not at the end stays
        "Answer the question using a single word or phrase. What is shown?",
        0,
        "Answer the question using a single word or phrase. What is shown?" + BOXED,
    ),
]


@pytest.mark.parametrize(("question", "n_images", "expected"), CASES)
def test_internvl_instruction_gives_internvls_exact_text(question, n_images, expected):
    assert with_prompt_instruction(question, n_images, "internvl") == expected


def test_none_leaves_the_question_alone():
    question = "<image>\nWhat color is the car?\nAnswer the question using a single word or phrase."
    assert with_prompt_instruction(question, 1, "none") == question


def test_an_unknown_instruction_is_refused_by_name():
    with pytest.raises(ValueError, match="prompt_instruction must be 'none' or 'internvl', got 'en_v2'"):
        with_prompt_instruction("q", 0, "en_v2")
