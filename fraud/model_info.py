"""What a pushed model carries beside its graph, and what loading it needs.

- `assets.extra/fraud_model.json`: the model kind, the shipped threshold and its target, the
  validation figures the ModelSelector compares, the training report (written by the trainers).
- Custom ops: a gradient-boosted-trees model (TensorFlow Decision Forests) runs the `SimpleML*` ops,
  which TensorFlow only knows once `tensorflow_decision_forests` is imported. Every process that loads
  a model (the model server, the Evaluator, infra validation, benchmarks) calls `load_custom_ops`
  first; it reads the op names from saved_model.pb and imports only what the model needs.
"""

from __future__ import annotations

import json
import os
from typing import Any

#: File in the SavedModel's assets.extra holding the threshold, its target and training facts.
MODEL_INFO_FILE = "fraud_model.json"
#: Ops of TensorFlow Decision Forests' inference library (registered by importing the package).
DECISION_FOREST_OP_PREFIX = "SimpleML"


def read_model_info(model_dir: str) -> dict[str, Any]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(model_dir, "assets.extra", MODEL_INFO_FILE)) as f:
        return json.loads(f.read())


def saved_model_ops(model_dir: str) -> set[str]:
    """Names of every op in the SavedModel's graphs and functions (saved_model.pb only)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    ops: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        ops |= meta_graph_ops(meta_graph)
    return ops


def meta_graph_ops(meta_graph: Any) -> set[str]:
    """Names of the ops of one MetaGraphDef (its graph and its function library)."""
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def load_custom_ops_for(ops: set[str], where: str) -> list[str]:
    """Registers the custom ops among `ops`; returns the libraries imported. Raises ImportError naming
    the package when one is needed and not installed."""
    if not any(op.startswith(DECISION_FOREST_OP_PREFIX) for op in ops):
        return []
    try:
        import tensorflow_decision_forests  # noqa: F401 - registers the SimpleML* ops
    except ImportError as exc:  # pragma: no cover - the lock installs it
        raise ImportError(f"{where}: the model uses TensorFlow Decision Forests ops; install "
                          f"tensorflow_decision_forests") from exc
    return ["tensorflow_decision_forests"]


def load_custom_ops(model_dir: str) -> list[str]:
    """Registers the custom ops the SavedModel at `model_dir` uses (see the module docstring)."""
    if not os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        return []
    return load_custom_ops_for(saved_model_ops(model_dir), model_dir)
