"""The one error type for bad input data."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data.

    The message names the file and line (or row), what is wrong, and the fix, e.g.
    "prompts.jsonl line 812: image 'a.png' not found under image_root=/data/imgs; fix the path or set on_error=skip".
    `reason` is a short machine key ("missing_image", "empty_question", ...) that skip-mode summaries count by.
    """

    def __init__(self, message: str, *, reason: str = "bad_row") -> None:
        super().__init__(message)
        self.reason = reason
