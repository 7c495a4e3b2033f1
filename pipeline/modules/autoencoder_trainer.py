"""Trainer module file of the autoencoder (unsupervised; trained on non-fraud rows only).

`custom_config` may hold "autoencoder": {...} (pipeline.training.AutoencoderConfig fields, e.g.
"epochs", "seeds", "target": {"kind": "precision", "value": 0.5}). TrainArgs.num_steps bounds the
gradient steps per seed. Train on the `train` split, choose epochs, calibration and the threshold on
the Trainer's eval split (the pipeline passes `validation`).
"""

from absl import logging
from tfx import v1 as tfx

from pipeline.training import AutoencoderConfig, TrainerInputs, run_training

CONFIG_KEY = "autoencoder"


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    config = AutoencoderConfig.from_dict((fn_args.custom_config or {}).get(CONFIG_KEY, {}))
    inputs = TrainerInputs(train_files=fn_args.train_files, validation_files=fn_args.eval_files,
                           transform_output_dir=fn_args.transform_output,
                           serving_model_dir=fn_args.serving_model_dir, max_steps=fn_args.train_steps or None)
    run_training("autoencoder", inputs, config, log=logging.info)
