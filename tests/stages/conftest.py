"""Fixtures for stage tests: a tiny checkpoint on disk, rendered images and an MMPR pairs file."""

import json

import pytest
from synthetic import shapes_image

from cascade_rl.rewards.scoring import CorrectRule, RewardSpec

EASY = [RewardSpec("stages.easy_rewards:digit_share")]


def write_pairs(directory, n: int = 6, *, chosen_len_equal: bool = True, text_only: tuple = ()) -> tuple:
    """n pairs over n rendered images; chosen answers have equal token counts (one digit each). Pairs whose index is
    in `text_only` have no image."""
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"img{i}.png"
        shapes_image(64 + 64 * (i % 2), 64, seed=i).save(images / name)
        rows.append(
            {
                "image": None if i in text_only else name,
                "question": ("" if i in text_only else "<image>\n") + "How many squares are there?",
                "chosen": f"I count them. Answer: \\boxed{{{i % 10}}}",
                "rejected": "I guess. Answer: \\boxed{" + str((i + 3) % 10) + "}" + (" maybe" * (i % 3)),
                "answer_gt": str(i % 10),
            }
        )
    for row in rows:
        if row["image"] is None:
            del row["image"]
    path = directory / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, images


@pytest.fixture
def pairs_file(tmp_path):
    return write_pairs(tmp_path)


def with_sections(base: dict, overrides: dict) -> dict:
    """`base` with `overrides`; a section given as a dict (optim, sampling, vllm) updates base's section key by key."""
    merged = {**base, **overrides}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
    return merged


def build(config_cls, base: dict, **overrides):
    """`config_cls` from plain data `base` with `overrides` (as in `with_sections`), through the YAML loader."""
    from cascade_rl.config import from_dict

    return from_dict(config_cls, with_sections(base, overrides))


def multi_rank_mpo_settings(checkpoint, pairs_file, **overrides) -> dict:
    """MPOConfig fields (as plain data for `from_dict`) shared by the runs that compare several ranks with one
    process (DDP, DeepSpeed); `overrides` as in `with_sections`."""
    path, images = pairs_file
    settings = dict(
        model_path=str(checkpoint),
        pairs=str(path),
        image_root=str(images),
        optim={"lr": 1e-3, "warmup_ratio": 0.0},
        max_tiles=4,
    )
    return with_sections(settings, overrides)


def gspo_config(checkpoint, tmp_path, **kw):
    """A GSPOConfig for short runs on a tiny checkpoint: 8 prompts, 4 per step, 4 rollouts each, a reward that
    rises with the share of digits; `kw` overrides any field, a section given as a dict (`optim={"max_steps": 2}`)
    only the keys it names."""
    from cascade_rl.stages.gspo import GSPOConfig

    prompts = write_prompts(tmp_path, n=8)
    base = dict(
        model_path=str(checkpoint),
        prompts=str(prompts),
        image_root=str(tmp_path / "images"),
        out_dir=str(tmp_path / "run"),
        sampling={"n": 4, "max_new_tokens": 6},
        prompts_per_step=4,
        mini_batch_prompts=2,
        max_tiles=4,
        optim={"lr": 1e-3},
        rewards=EASY,
        correct=[CorrectRule(EASY[0].name, 0.5)],
        clip_low=0.2,
        clip_high=0.2,
        reward_timeout_s=30.0,
    )
    return build(GSPOConfig, base, **kw)


def write_prompts(directory, n=4):
    """n prompts q0..q{n-1} over rendered 64×64 images; the answer of q_i is i."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        shapes_image(64, 64, seed=i).save(directory / "images" / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"{i}.png", "question": "How many squares?", "answer": str(i)})
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / "prompts.jsonl"
