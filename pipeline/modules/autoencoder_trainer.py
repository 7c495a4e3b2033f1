"""Trainer module of the Autoencoder (unsupervised; trained on non-fraud rows only): pipeline/models/autoencoder.py.

`custom_config` may hold "autoencoder": {...} (the kind's config fields); TrainArgs.num_steps bounds the
gradient steps per seed; `base_model` (the last blessed model of this kind) is warm-started from.
Trains on the `train` split; early stopping, calibration and the threshold use the Trainer's eval
split (the pipeline passes `validation`).
"""

from pipeline.models import autoencoder
from pipeline.models.base import make_run_fn

run_fn = make_run_fn(autoencoder.KIND)
