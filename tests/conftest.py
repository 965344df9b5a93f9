"""Session-wide test set-up: offline hub, tiny fixtures built once per session."""

import os

# A stray download must fail loudly: no machine running these tests reaches a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_internvl():
    """(model, processor): the `tiny` preset, seed 0, built once per session. Do not train it in place."""
    from cascade_rl.models import build_tiny_internvl

    return build_tiny_internvl("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_internvl, tmp_path_factory):
    """The tiny InternVL saved to disk, as a real checkpoint would be."""
    from cascade_rl.models import save_policy

    model, processor = tiny_internvl
    return save_policy(model, processor, tmp_path_factory.mktemp("tiny_internvl"))
