"""The system prompt lands where InternVL's `internvl2_5` template puts it, and is never trained."""

from synthetic import shapes_image

from cascade_rl.data import PromptRow
from cascade_rl.models import encode_chat, encode_prompt

# The internvl2_5 template's default system_message, copied by hand from OpenGVLab/InternVL (2410d1d)
# internvl_chat_gpt_oss/internvl/model/internvl_chat/conversation.py.
INTERNVL_DEFAULT = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
REPLY = "There are 3 squares. Answer: \\boxed{3}"


def internvl2_5_rendering(system: str | None, user: str, tiles: int, reply: str | None = None) -> str:
    """The template written out (SeparatorStyle.MPT: system_template + sep, then role + message + sep per turn, sep
    = '<|im_end|>\\n'; None: no system turn), `<image>` expanded to `<img>` + `<IMG_CONTEXT>` × 16 per tiny tile +
    `</img>`."""
    image = "<img>" + "<IMG_CONTEXT>" * (16 * tiles) + "</img>"
    text = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    text += f"<|im_start|>user\n{user.replace('<image>', image)}<|im_end|>\n<|im_start|>assistant\n"
    return text if reply is None else text + f"{reply}<|im_end|>\n"


def row(**kw) -> PromptRow:
    return PromptRow(id="r", question="<image>\nHow many squares?", images=["a.png"], **kw)


def test_prompt_ids_equal_the_templates_rendering(tiny_internvl):
    processor = tiny_internvl[1]
    image = shapes_image(128, 64)  # 2×1 grid + thumbnail = 3 tiles at max 6
    encoded = encode_prompt(processor, row().to_messages(INTERNVL_DEFAULT), [image], max_tiles=6)
    expected = internvl2_5_rendering(INTERNVL_DEFAULT, "<image>\nHow many squares?", tiles=3)
    assert encoded.input_ids.tolist() == processor.tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_chat_ids_equal_the_rendering_and_only_the_reply_is_trained(tiny_internvl):
    processor = tiny_internvl[1]
    tok = processor.tokenizer
    messages = row().to_messages(INTERNVL_DEFAULT) + [{"role": "assistant", "content": REPLY}]
    encoded = encode_chat(processor, messages, [shapes_image(128, 64)], max_tiles=6)
    expected = internvl2_5_rendering(INTERNVL_DEFAULT, "<image>\nHow many squares?", tiles=3, reply=REPLY)
    assert encoded.input_ids.tolist() == tok(expected, add_special_tokens=False)["input_ids"]
    assert tok.decode(encoded.input_ids[encoded.loss_mask]) == REPLY + "<|im_end|>"
    prompt = internvl2_5_rendering(INTERNVL_DEFAULT, "<image>\nHow many squares?", tiles=3)
    prompt_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert not encoded.loss_mask[:prompt_len].any()  # system, user and `<|im_start|>assistant\n` untrained


def test_a_rows_own_system_prompt_wins(tiny_internvl):
    processor = tiny_internvl[1]
    own = row(system_prompt="Count carefully.").to_messages(INTERNVL_DEFAULT)
    encoded = encode_prompt(processor, own, [shapes_image(64, 64)], max_tiles=6)
    expected = internvl2_5_rendering("Count carefully.", "<image>\nHow many squares?", tiles=1)
    assert encoded.input_ids.tolist() == processor.tokenizer(expected, add_special_tokens=False)["input_ids"]
