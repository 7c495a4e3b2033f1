"""Trainer module of the Supervised MLP: pipeline/models/mlp.py.

`custom_config` may hold "supervised": {...} (the kind's config fields); TrainArgs.num_steps bounds the
gradient steps per seed; `base_model` (the last blessed model of this kind) is warm-started from.
Trains on the `train` split; early stopping, calibration and the threshold use the Trainer's eval
split (the pipeline passes `validation`).
"""

from pipeline.models import mlp
from pipeline.models.base import make_run_fn

run_fn = make_run_fn(mlp.KIND)
