"""Verifiable rewards, importable as ``cascade_rl.rewards``."""
