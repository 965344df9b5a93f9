"""cascade-rl: Cascade RL (offline MPO, then online GSPO) for vision-language models."""

__version__ = "0.1.0"
