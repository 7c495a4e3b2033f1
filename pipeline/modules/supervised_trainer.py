"""Trainer module file of the supervised model (an MLP on the same transformed features).

`custom_config` may hold "supervised": {...} (pipeline.training.SupervisedConfig fields). TrainArgs
.num_steps bounds the gradient steps per seed. Train on `train`; early stopping, calibration and the
threshold use the Trainer's eval split (the pipeline passes `validation`).
"""

from absl import logging
from tfx import v1 as tfx

from pipeline.training import SupervisedConfig, TrainerInputs, run_training

CONFIG_KEY = "supervised"


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    config = SupervisedConfig.from_dict((fn_args.custom_config or {}).get(CONFIG_KEY, {}))
    inputs = TrainerInputs(train_files=fn_args.train_files, validation_files=fn_args.eval_files,
                           transform_output_dir=fn_args.transform_output,
                           serving_model_dir=fn_args.serving_model_dir, max_steps=fn_args.train_steps or None)
    run_training("supervised", inputs, config, log=logging.info)
