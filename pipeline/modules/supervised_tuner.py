"""Tuner module of the supervised MLP (TFX Tuner, KerasTuner RandomSearch on validation AUPRC).

See pipeline/models/mlp.py `tuner_fn`; the Trainer applies the best values (`hyperparameters`).
"""

from pipeline.models.mlp import tuner_fn

__all__ = ["tuner_fn"]
