"""Pieces the trainers share: accelerator and schedule set-up, DeepSpeed/ZeRO-3 handling, resumable state,
metrics, the reference pass, the GSPO group and its rank helpers, the MPO pair source."""
