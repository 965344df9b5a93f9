"""Session-wide test set-up: offline hub, tiny fixtures built once per session."""

import os

# A stray download must fail loudly: no machine running these tests reaches a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
