"""InternVL processor handling: build, save and load, with or without torchvision.

transformers' `InternVLProcessor` has three slots: image processor, tokenizer and video processor. The video
processor needs torchvision, which has no CPU build on every machine. `InternVLImageProcessor` is the same
processor without the video slot; it saves files that name `InternVLProcessor`, so the checkpoint stays a plain
transformers checkpoint (`AutoProcessor.from_pretrained` on a machine with torchvision, vLLM, ...).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from cascade_rl.models.tokenizer import CHATML_TEMPLATE

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class InternVLImageProcessor(InternVLProcessor):
    """`InternVLProcessor` for images only: no video slot, hence no torchvision needed.

    Its files are a complete `InternVLProcessor`'s: they name that class and carry a video processor entry, so
    `AutoProcessor.from_pretrained` (and vLLM, which loads the processor that way) read them on a machine with
    torchvision.
    """

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["processor_class"] = InternVLProcessor.__name__  # what the files on disk promise to transformers
        data.setdefault("video_processor", video_processor_dict(self.image_processor))
        return data


VIDEO_KEYS_FROM_IMAGES = (
    "do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std", "resample",
    "rescale_factor", "size",
)  # fmt: skip


def video_processor_dict(image_processor) -> dict:
    """The `InternVLVideoProcessor` entry of processor_config.json, frames processed like the images: the entry
    `InternVLProcessor.save_pretrained` writes, built without torchvision (which the video processor class needs)."""
    image = image_processor.to_dict()
    entry = {key: image[key] for key in VIDEO_KEYS_FROM_IMAGES if key in image}
    for key in ("image_mean", "image_std"):
        entry[key] = list(entry[key])
    entry["resample"] = int(entry["resample"])
    return {**entry, "video_processor_type": "InternVLVideoProcessor", "do_sample_frames": False}


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None and _torchvision_imports()


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA-only build on a CPU torch fails at import time
        return False
    return True


def build_internvl_processor(
    tokenizer, *, tile_size: int, image_seq_length: int, max_tiles: int = 12
) -> InternVLImageProcessor:
    """InternVL processor: dynamic tiling into `tile_size`² tiles (+ thumbnail), ImageNet normalisation.

    image_seq_length = tokens per tile after pixel shuffle = (tile_size / patch_size)² · 0.25.
    """
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": tile_size, "width": tile_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_tiles,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return InternVLImageProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=image_seq_length,
        chat_template=tokenizer.chat_template or CHATML_TEMPLATE,
    )


def load_internvl_processor(path: str | Path) -> InternVLProcessor:
    """Load the processor of a Hugging Face format InternVL checkpoint directory.

    With a working torchvision this is exactly `AutoProcessor.from_pretrained(path)`; without, the same files are
    read into `InternVLImageProcessor` (PIL image processor, no video slot).
    """
    if torchvision_available():
        return AutoProcessor.from_pretrained(path)
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    config = _read_json(path / "processor_config.json")
    template_file = path / "chat_template.jinja"
    chat_template = template_file.read_text() if template_file.exists() else tokenizer.chat_template
    return InternVLImageProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=config.get("image_seq_length", 256),
        chat_template=chat_template,
    )


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)
