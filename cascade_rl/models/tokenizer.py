"""A small byte-level BPE tokenizer trained in-process, with InternVL's special tokens and a ChatML template.

Deterministic: the corpus is generated from fixed word lists, so two builds give identical vocabularies.
Used by the tiny models of tests, the demo and the benchmarks; real checkpoints ship their own tokenizer.
"""

from __future__ import annotations

import itertools

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2/3's pre-tokenisation pattern: digits split one by one, so arithmetic answers tokenise predictably.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIAL_TOKENS = [
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
EXTRA_SPECIAL_TOKENS = ["<video>"]
# Named special tokens that transformers' InternVLProcessor reads off the tokenizer.
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

_WORDS = (
    "how many red green blue yellow purple orange black white circle circles square squares triangle triangles "
    "shape shapes are there is the a an in of image picture left right top bottom where locate find count "
    "answer question final box boxed think step let us first then so total number what which color largest "
    "smallest object objects system user assistant you helpful please reason carefully and give"
).split()
_LATEX = ["\\boxed{", "\\frac{", "}{", "\\sqrt{", "\\pi", "\\cdot", "^{", "_{", "\\left(", "\\right)", "\\times"]


def _corpus() -> list[str]:
    """Deterministic training text covering words, digits, LaTeX and answer formats."""
    words = _WORDS + [w.capitalize() for w in _WORDS]
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 4)]
    lines += [f"Answer: \\boxed{{{n}}}" for n in range(100)]
    lines += [f"There are {n} {c} {s}." for n, (c, s) in enumerate(itertools.product(_WORDS[3:10], _WORDS[12:18]))]
    lines += [f"<ref>{w}</ref><box>[[{i}, {i + 1}, {i + 7}, {i + 9}]]</box>" for i, w in enumerate(_WORDS[:40])]
    lines += [" ".join(_LATEX), "<think>Let us count step by step.</think>", "(A) (B) (C) (D) 1/2 3.5 45% 90°"]
    return lines * 3


def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in-process; eos = `<|im_end|>`, pad = `<|endoftext|>`."""
    specials = CHAT_SPECIAL_TOKENS + INTERNVL_SPECIAL_TOKENS + EXTRA_SPECIAL_TOKENS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens=dict(INTERNVL_NAMED_TOKENS),
        chat_template=CHATML_TEMPLATE,
    )


# ChatML as used by InternVL3.5 (`internvl2_5` template, SPEC §6): an image part renders as `<IMG_CONTEXT>\n`, which
# the processor expands to `<img>` + `<IMG_CONTEXT>` × (tokens per tile × tiles) + `</img>`.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
