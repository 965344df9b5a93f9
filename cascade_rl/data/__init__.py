"""Row schemas and loading: prompt rows, image loading, prompt files (jsonl / json / parquet), file helpers."""

from cascade_rl.data.errors import DataError
from cascade_rl.data.images import image_sizes, load_images, resolve_image
from cascade_rl.data.reader import ReadSummary, read_prompts, row_from_record
from cascade_rl.data.request import row_to_request
from cascade_rl.data.rows import IMAGE_PLACEHOLDER, PromptRow, prompt_id_for, with_image_placeholders

__all__ = [
    "DataError",
    "IMAGE_PLACEHOLDER",
    "PromptRow",
    "ReadSummary",
    "image_sizes",
    "load_images",
    "prompt_id_for",
    "read_prompts",
    "resolve_image",
    "row_from_record",
    "row_to_request",
    "with_image_placeholders",
]
