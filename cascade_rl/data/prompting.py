"""How InternVL's offline pipeline shapes a prompt: its template's default system prompt and its answer instruction.

Texts are InternVL's own (OpenGVLab/InternVL at 2410d1d, SPEC §2 and §6):
- `INTERNVL_SYSTEM_PROMPT`: the `internvl2_5` conversation template's default `system_message`
  (`internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py`), which MMPR sampling (lmdeploy with
  `ChatTemplateConfig(model_name='internvl2_5')`), DropoutNTP and MPO training all apply when a row gives none.
- `INTERNVL_SHORT_ANSWER_SUFFIXES` and `INTERNVL_BOXED_INSTRUCTION`: `VALID_INSTRUCTIONS` and `INSTRUCTION_BOXED_EN`
  of `internvl_chat/tools/reasoning_data_pipeline/utils/constants.py`, applied by
  `mmpr_data_pipeline_correctness.py` (`--prompt-version en_v2`, `VQADataset.*_get_item`).
"""

from __future__ import annotations

from typing import Literal

from cascade_rl.data.rows import IMAGE_PLACEHOLDER

PromptInstruction = Literal["none", "internvl"]

INTERNVL_SYSTEM_PROMPT = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)

INTERNVL_SHORT_ANSWER_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
    "Please answer Yes or No.",
    "Please answer the question and put the final answer within \\boxed{}.",
)

INTERNVL_BOXED_INSTRUCTION = (
    "{question}\n"
    "Answer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion "
    "based on the reasoning provided. If you are uncertain or the problem is too complex, make "
    "a reasoned guess based on the information provided. Avoid repeating steps indefinitely—"
    "provide your best guess even if unsure. Think step by step logically, considering all "
    "relevant information before answering."
)


def with_prompt_instruction(question: str, n_images: int, instruction: PromptInstruction) -> str:
    """The question as the sampler sees it (and as the pairs store it) under `instruction`.

    "none": unchanged. "internvl" (InternVL's `en_v2` prompt): each short-answer suffix the question ends with is
    cut (in the order of `INTERNVL_SHORT_ANSWER_SUFFIXES`; InternVL loops over a set), the rest is stripped of
    surrounding whitespace and put into `INTERNVL_BOXED_INSTRUCTION`; with one image, its placeholder moves to the
    front as `<image>\\n`. Several images keep their placeholders where they are.
        "<image>\\nHow many?\\nAnswer the question using a single word or phrase.", 1
        -> "<image>\\nHow many?\\nAnswer the preceding question. The last line of your response ..."
    """
    if instruction == "none":
        return question
    if instruction != "internvl":
        raise ValueError(f"prompt_instruction must be 'none' or 'internvl', got {instruction!r}")
    for suffix in INTERNVL_SHORT_ANSWER_SUFFIXES:
        if question.endswith(suffix):
            question = question[: -len(suffix)].strip()
    question = INTERNVL_BOXED_INSTRUCTION.replace("{question}", question)
    if n_images == 1 and question.count(IMAGE_PLACEHOLDER) <= 1:
        question = question.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    return question
