"""Offline data work, importable as ``cascade_rl.data_tools``."""
