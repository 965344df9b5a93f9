"""Prompt shaping through the offline stages as a user configures it: the rollout stage's `prompt_instruction` and
`system_prompt` reach the engine and the pairs file; MPO's `system_prompt` reaches the log-probs it trains on (the
InternVL3.5 recipes' settings: tests/test_recipes.py)."""

import json
from pathlib import Path

import pytest
import torch
from data.test_prompting import BOXED
from models.test_system_prompt import INTERNVL_DEFAULT, internvl2_5_rendering
from stages.conftest import build, write_pairs
from stages.test_offline_stages import ScriptedEngine
from synthetic import shapes_image

from cascade_rl.config import ConfigError
from cascade_rl.data_tools.ledger import PassRateLedger
from cascade_rl.models import load_policy, process_images
from cascade_rl.stages.mpo import MPOConfig, run_mpo
from cascade_rl.stages.pairs import PairsStageConfig, run_pairs
from cascade_rl.stages.rollout import RolloutStageConfig, run_rollouts


class RecordingEngine(ScriptedEngine):
    """ScriptedEngine (sample k of q{i} is right when k < i) that keeps every request it is given."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def generate(self, requests, *, n, sampling):
        self.requests += requests
        return super().generate(requests, n=n, sampling=sampling)


def write_rows(directory: Path) -> Path:
    (directory / "images").mkdir(parents=True)
    for i in (1, 2):
        shapes_image(64, 64, seed=i).save(directory / "images" / f"{i}.png")
    rows = [
        {"id": "q1", "image": "1.png", "answer": "1", "question": "How many squares?\nPlease answer Yes or No."},
        {
            "id": "q2",
            "image": "2.png",
            "answer": "2",
            "question": "Count the <image> squares. Answer the question using a single word or phrase.",
            "system_prompt": "Count carefully.",
        },
    ]
    (directory / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / "prompts.jsonl"


def rollout_config(tmp_path, **kw):
    prompts = write_rows(tmp_path)
    base = dict(
        model_path="unused-with-an-injected-engine",
        prompts=str(prompts),
        image_root=str(tmp_path / "images"),
        out_dir=str(tmp_path / "offline"),
        sampling={"n": 4},
    )
    return build(RolloutStageConfig, base, **kw)


def test_rollout_instruction_and_system_prompt_reach_the_engine_and_the_pairs(tmp_path):
    config = rollout_config(tmp_path, prompt_instruction="internvl", system_prompt=INTERNVL_DEFAULT)
    engine = RecordingEngine()
    run_rollouts(config, engine=engine)
    # By hand (InternVL's en_v2, data/test_prompting.py): suffix cut, instruction appended, the one image in front.
    q1 = "<image>\nHow many squares?" + BOXED
    q2 = "<image>\nCount the  squares." + BOXED
    seen = {r.prompt_id: r.messages for r in engine.requests}
    assert seen["q1"][0] == {"role": "system", "content": [{"type": "text", "text": INTERNVL_DEFAULT}]}
    assert seen["q2"][0]["content"][0]["text"] == "Count carefully."  # the row's own wins
    assert seen["q1"][1]["content"] == [{"type": "image"}, {"type": "text", "text": q1[len("<image>\n") :]}]
    assert sorted(PassRateLedger.load(tmp_path / "offline" / "ledger.json")) == ["q1", "q2"]

    out = tmp_path / "pairs.jsonl"
    run_pairs(PairsStageConfig(rollouts=str(tmp_path / "offline" / "rollouts"), out=str(out)))
    pairs = {json.loads(line)["answer_gt"]: json.loads(line) for line in out.read_text().splitlines()}
    assert pairs["1"]["question"] == q1 and "system_prompt" not in pairs["1"]  # MPO's setting applies to it
    assert pairs["2"]["question"] == q2 and pairs["2"]["system_prompt"] == "Count carefully."


def test_without_an_instruction_the_question_is_sampled_and_stored_as_given(tmp_path):
    engine = RecordingEngine()
    run_rollouts(rollout_config(tmp_path), engine=engine)
    by_id = {r.prompt_id: r.messages for r in engine.requests}
    as_given = [{"type": "image"}, {"type": "text", "text": "How many squares?\nPlease answer Yes or No."}]
    assert by_id["q1"] == [{"role": "user", "content": as_given}]  # no system turn either


def test_an_unknown_instruction_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="prompt_instruction must be one of 'none', 'internvl'; got 'en_v2'"):
        rollout_config(tmp_path, prompt_instruction="en_v2")


def reference_chosen_logp(model, processor, system: str | None, image, chosen: str) -> float:
    """log π(chosen + <|im_end|> | prompt) from one plain forward over the hand-rendered internvl2_5 prompt."""
    tok = processor.tokenizer
    prompt = internvl2_5_rendering(system, "<image>\nHow many squares are there?", tiles=1)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    completion = tok(chosen + "<|im_end|>", add_special_tokens=False)["input_ids"]
    pixel_values, _ = process_images(processor, [image], max_tiles=4)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + completion]), pixel_values=pixel_values).logits[0]
    logps = logits[len(prompt_ids) - 1 : -1].float().log_softmax(-1)
    return logps.gather(-1, torch.tensor(completion)[:, None]).sum().item()


def test_mpo_system_prompt_is_in_the_sequences_it_scores(tiny_checkpoint, tmp_path):
    path, images = write_pairs(tmp_path, n=2)
    base = dict(
        model_path=str(tiny_checkpoint), pairs=str(path), image_root=str(images), out_dir=str(tmp_path / "run")
    )
    settings = dict(max_tiles=4, system_prompt=INTERNVL_DEFAULT, optim={"max_steps": 1, "per_device_batch": 2})
    run_mpo(build(MPOConfig, base, **settings))
    (cache,) = (tmp_path / "run").glob("reference_logps-*.pt")
    cached = torch.load(cache, weights_only=True)["logps"]  # [pairs, (chosen, rejected)], the untrained policy's
    model, processor = load_policy(tiny_checkpoint)
    image, chosen = shapes_image(64, 64, seed=0), "I count them. Answer: \\boxed{0}"  # pair 0 of write_pairs
    with_system = reference_chosen_logp(model, processor, INTERNVL_DEFAULT, image, chosen)
    without = reference_chosen_logp(model, processor, None, image, chosen)
    assert cached[0, 0].item() == pytest.approx(with_system, abs=1e-4)
    assert abs(with_system - without) > 1e-3  # the check can tell the two prompts apart
