"""The prompt row: one question, its images and its ground truth, and how it becomes InternVL chat messages."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

IMAGE_PLACEHOLDER = "<image>"


def prompt_id_for(images: list[str], question: str) -> str:
    """A stable id for a row without one: "p-" + 16 hex digits of sha1(json([images, question])).

    Stable across runs, machines and Python versions (no `hash()`), so a rerun finds the same ids in a store.
    """
    digest = hashlib.sha1(json.dumps([list(images), question], ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"p-{digest[:16]}"


def with_image_placeholders(question: str, n_images: int) -> str:
    """The question as MMPR stores it: one `<image>` placeholder per image.

    A single image without a placeholder gets `<image>\\n` prepended (as InternVL's MPO dataset does);
    several images without any get `Image-1: <image>\\nImage-2: <image>\\n...` (InternVL's multi-image chat
    convention). A question that already has placeholders is returned unchanged.
    """
    if n_images == 0 or IMAGE_PLACEHOLDER in question:
        return question
    if n_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    header = "".join(f"Image-{k}: {IMAGE_PLACEHOLDER}\n" for k in range(1, n_images + 1))
    return header + question


def question_content(question: str, n_images: int) -> list[dict[str, Any]]:
    """Chat content parts for a question: image parts where its `<image>` placeholders are, text between.

    Without placeholders the images come first, then the text. The newline right after a placeholder is
    dropped because the chat template writes one after every image part. The number of placeholders must be
    0 or `n_images` (readers check this and name the row).
        "<image>\\nWhat is shown?", 1 -> [{"type": "image"}, {"type": "text", "text": "What is shown?"}]
    """
    n_placeholders = question.count(IMAGE_PLACEHOLDER)
    if n_placeholders == 0:
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        return parts + [{"type": "text", "text": question}]
    if n_placeholders != n_images:
        raise ValueError(f"question has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but {n_images} images")
    parts = []
    for k, piece in enumerate(question.split(IMAGE_PLACEHOLDER)):
        if k > 0:
            parts.append({"type": "image"})
            piece = piece[1:] if piece.startswith("\n") else piece
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


@dataclass
class PromptRow:
    """One prompt.

    id: stable prompt id (the row's `id` column, else `prompt_id_for(images, question)`).
    question: the user text, possibly with `<image>` placeholders.
    images: image paths relative to an image root (absolute paths also work).
    answer: the ground truth (any JSON value), None when the dataset has none.
    extra: every other column (bbox, data_source, ...), passed to rewards as keyword columns.
    system_prompt: a per-row system prompt, if the dataset has one.
    source: where the row came from ("prompts.jsonl line 3"), for error messages.
    """

    id: str
    question: str
    images: list[str] = field(default_factory=list)
    answer: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    source: str = field(default="", compare=False, repr=False)

    def to_messages(self, system_prompt: str | None = None) -> list[dict[str, Any]]:
        """InternVL chat messages: [system?] + [{"role": "user", "content": [image parts..., text part]}].

        `system_prompt` is the default; a row's own `system_prompt` wins over it. With neither, no system
        message is emitted and the model's chat template applies its own default.
        """
        system = self.system_prompt if self.system_prompt is not None else system_prompt
        messages: list[dict[str, Any]] = []
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": question_content(self.question, len(self.images))})
        return messages

    def columns(self) -> dict[str, Any]:
        """Dataset columns for rewards and stores: question, images, answer, every extra column, and the row's own
        system_prompt when it has one (so its preference pairs carry it too)."""
        own = {} if self.system_prompt is None else {"system_prompt": self.system_prompt}
        return {"question": self.question, "images": list(self.images), "answer": self.answer, **self.extra, **own}
