"""Evaluator module: loads the candidate and baseline the way every other loader does.

TFMA's default loader would fail on a gradient-boosted-trees model (its `SimpleML*` ops are unknown
until tensorflow_decision_forests is imported); `custom_eval_shared_model` registers the custom ops a
model needs (fraud.model_info.load_custom_ops) and then hands over to TFMA's default.
"""

from typing import Any

import tensorflow_model_analysis as tfma

from fraud.model_info import load_custom_ops


def custom_eval_shared_model(eval_saved_model_path: str, model_name: str, eval_config: Any, **kwargs: Any) -> Any:
    load_custom_ops(eval_saved_model_path)
    return tfma.default_eval_shared_model(eval_saved_model_path=eval_saved_model_path, model_name=model_name,
                                          eval_config=eval_config, **kwargs)
