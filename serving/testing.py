"""Tiny SavedModels for the serving tests, the benchmark and checking an external TF Serving.

    python -m serving.testing DIR     # writes the test models and DIR/models.config, prints how to serve them

Models (each version directory is written to a hidden temp name and renamed, so a polling server
never sees half a model):

- `tensors`: generic tensor signatures. `serving_default`: x float32[?,3], k int64[?] -> total float32[?],
  doubled float32[?,3], k_plus_one int64[?], positive bool[?], tag_bytes string[?], version int64[?];
  `half_plus_two`: x float32[?] -> y float32[?]; `echo`: text string[?] -> length int32[?], upper string[?];
  `spin`: iterations int64[] -> count int64[] (a graph loop that runs as long as asked: slow calls).
- `examples`: the project's contract (fraud.signature): `serving_default` takes serialized raw
  tf.Examples (`examples`) and returns score / decision / threshold / reconstruction_error /
  feature_contributions; plus `classify` (method tensorflow/serving/classify: inputs -> classes, scores)
  and `regress` (method tensorflow/serving/regress: inputs -> outputs). The threshold is version / 10.
- `reload`: an `examples` model the hot-reload test adds versions to.
- `labels`: versions 1 and 2 (policy: specific), labels stable -> 1 and canary -> 2.
- `broken`: version 1 good; tests add a version that cannot load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fraud.features import FEATURE_NAMES
from fraud.signature import (
    DECISION,
    FEATURE_CONTRIBUTIONS,
    FEATURES_SIGNATURE_NAME,
    INPUT_EXAMPLES,
    INPUT_FEATURES,
    RECONSTRUCTION_ERROR,
    SCORE,
    SIGNATURE_NAME,
    THRESHOLD,
)

TENSORS = "tensors"
EXAMPLES = "examples"
RELOAD = "reload"
LABELS = "labels"
BROKEN = "broken"
MODEL_NAMES = (TENSORS, EXAMPLES, RELOAD, LABELS, BROKEN)
CONFIG_FILE = "models.config"
MONITORING_FILE = "monitoring.config"

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

#: Fixed weights of the `examples` model (one per feature, in fraud.features order).
WEIGHTS = np.linspace(-0.5, 0.5, len(FEATURE_NAMES)).astype(np.float32)
BIAS = np.float32(-0.25)


def _atomic_version_dir(base_path: str | os.PathLike, version: int) -> tuple[Path, Path]:
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    final = base / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    return base / f".tmp-{version}-{uuid.uuid4().hex[:8]}", final


def _set_method_names(export_dir: Path, methods: Mapping[str, str]) -> None:
    """TF2 saves every signature as a predict signature; classify/regress ones are retagged here."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = export_dir / "saved_model.pb"
    proto = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta_graph in proto.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    pb.write_bytes(proto.SerializeToString())


def save_tensor_model(base_path: str | os.PathLike, version: int) -> Path:
    """Write version `version` of the `tensors` model under `base_path`; returns its directory."""
    import tensorflow as tf

    class TensorModel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.version = tf.Variable(version, dtype=tf.int64, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="k")])
        def serve(self, x: Any, k: Any) -> dict:
            total = tf.reduce_sum(x, axis=1) + tf.cast(k, tf.float32)
            return {
                "total": total,
                "doubled": x * 2.0,
                "k_plus_one": k + 1,
                "positive": total > 0,
                "tag_bytes": tf.strings.join([tf.constant("k="), tf.strings.as_string(k)]),
                "version": tf.fill(tf.shape(k), self.version),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def half_plus_two(self, x: Any) -> dict:
            return {"y": 0.5 * x + 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def echo(self, text: Any) -> dict:
            return {"length": tf.strings.length(text), "upper": tf.strings.upper(text)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="iterations")])
        def spin(self, iterations: Any) -> dict:
            count, _ = tf.while_loop(lambda i, acc: i < iterations, lambda i, acc: (i + 1, acc * 1.000001),
                                     [tf.constant(0, tf.int64), tf.constant(1.0)])
            return {"count": count}

    tmp, final = _atomic_version_dir(base_path, version)
    module = TensorModel()
    tf.saved_model.save(module, str(tmp), signatures={
        "serving_default": module.serve, "half_plus_two": module.half_plus_two, "echo": module.echo,
        "spin": module.spin})
    os.rename(tmp, final)
    return final


def save_examples_model(base_path: str | os.PathLike, version: int, warmup: Sequence[bytes] | None = None,
                        features_signature: bool = False) -> Path:
    """Write version `version` of a model with the project's signature (threshold = version / 10).

    `warmup`: serialized PredictionLog records to ship as assets.extra/tf_serving_warmup_requests.
    `features_signature`: also `serving_features` (fraud.signature: float32 [N, 30] `features`, same outputs).
    """
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for name in FEATURE_NAMES}
    threshold = float(version) / 10.0

    class ExamplesModel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(WEIGHTS, trainable=False)
            self.b = tf.Variable(BIAS, trainable=False)
            self.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False)

        def _score(self, examples: Any) -> tuple[Any, Any]:
            parsed = tf.io.parse_example(examples, spec)
            return self._score_features(tf.stack([parsed[name] for name in FEATURE_NAMES], axis=1))

        def _score_features(self, x: Any) -> tuple[Any, Any]:
            contributions = x * self.w
            return tf.sigmoid(tf.reduce_sum(contributions, axis=1) + self.b), contributions

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_EXAMPLES)])
        def serve(self, examples: Any) -> dict:
            return self._outputs(*self._score(examples))

        @tf.function(input_signature=[tf.TensorSpec([None, len(FEATURE_NAMES)], tf.float32, name=INPUT_FEATURES)])
        def serve_features(self, features: Any) -> dict:
            return self._outputs(*self._score_features(features))

        def _outputs(self, score: Any, contributions: Any) -> dict:
            thresholds = tf.fill(tf.shape(score), self.threshold)
            return {
                SCORE: score,
                DECISION: tf.cast(score >= thresholds, tf.int64),
                THRESHOLD: thresholds,
                RECONSTRUCTION_ERROR: tf.reduce_sum(tf.square(contributions), axis=1),
                FEATURE_CONTRIBUTIONS: contributions,
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: Any) -> dict:
            score, _ = self._score(inputs)
            n = tf.shape(score)[0]
            return {
                "classes": tf.tile(tf.constant([[b"legit", b"fraud"]]), [n, 1]),
                "scores": tf.stack([1.0 - score, score], axis=1),
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: Any) -> dict:
            score, _ = self._score(inputs)
            return {"outputs": score}

    tmp, final = _atomic_version_dir(base_path, version)
    module = ExamplesModel()
    signatures = {SIGNATURE_NAME: module.serve, "classify": module.classify, "regress": module.regress}
    if features_signature:
        signatures[FEATURES_SIGNATURE_NAME] = module.serve_features
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    _set_method_names(tmp, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})
    if warmup:
        write_warmup_file(tmp, warmup)
    os.rename(tmp, final)
    return final


def save_broken_version(base_path: str | os.PathLike, version: int) -> Path:
    """A version directory whose saved_model.pb is not a SavedModel: its load must fail."""
    tmp, final = _atomic_version_dir(base_path, version)
    tmp.mkdir()
    (tmp / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    os.rename(tmp, final)
    return final


def write_warmup_file(version_dir: str | os.PathLike, records: Iterable[bytes]) -> Path:
    import tensorflow as tf

    path = Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def example(values: Mapping[str, float] | None = None, seed: int = 0, extra: Mapping[str, Any] | None = None) -> bytes:
    """A serialized raw tf.Example with every feature of fraud.features (random unless given)."""
    from tensorflow.core.example import example_pb2

    rng = np.random.default_rng(seed)
    proto = example_pb2.Example()
    for name in FEATURE_NAMES:
        value = float(values[name]) if values and name in values else float(rng.normal())
        if name in ("Time", "Amount"):
            value = abs(value) * 100
        proto.features.feature[name].float_list.value.append(value)
    for name, value in (extra or {}).items():
        if isinstance(value, bytes):
            proto.features.feature[name].bytes_list.value.append(value)
        else:
            proto.features.feature[name].int64_list.value.append(int(value))
    return proto.SerializeToString()


def expected_score(serialized: bytes, version: int = 1) -> tuple[float, int, float]:
    """(score, decision, threshold) the `examples` model returns for one serialized example."""
    from tensorflow.core.example import example_pb2

    proto = example_pb2.Example.FromString(serialized)
    x = np.array([proto.features.feature[n].float_list.value[0] if n in proto.features.feature else 0.0
                  for n in FEATURE_NAMES], dtype=np.float32)
    score = float(1.0 / (1.0 + np.exp(-(float(np.dot(x, WEIGHTS)) + float(BIAS)))))
    threshold = float(np.float32(version / 10.0))
    return score, int(score >= threshold), threshold


def model_config_text(root: str | os.PathLike, mount: str | None = None) -> str:
    """ModelServerConfig for the test models; base paths under `mount` (the path the server sees)."""
    base = str(mount or Path(root).resolve())
    entries = []
    for name in MODEL_NAMES:
        policy = ""
        labels = ""
        if name == LABELS:
            policy = "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
            labels = ('    version_labels { key: "stable" value: 1 }\n'
                      '    version_labels { key: "canary" value: 2 }\n')
        entries.append(f'  config {{\n    name: "{name}"\n    base_path: "{base}/{name}"\n'
                       f'    model_platform: "tensorflow"\n{policy}{labels}  }}\n')
    return "model_config_list {\n" + "".join(entries) + "}\n"


def write_test_models(root: str | os.PathLike, mount: str | None = None) -> Path:
    """Create every test model with its initial versions, and `root/models.config`; returns the config path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / TENSORS / "1").exists():
        save_tensor_model(root / TENSORS, 1)
    if not (root / EXAMPLES / "1").exists():
        save_examples_model(root / EXAMPLES, 1)
    if not (root / RELOAD / "1").exists():
        save_examples_model(root / RELOAD, 1)
    for version in (1, 2):
        if not (root / LABELS / str(version)).exists():
            save_tensor_model(root / LABELS, version)
    if not (root / BROKEN / "1").exists():
        save_tensor_model(root / BROKEN, 1)
    config = root / CONFIG_FILE
    config.write_text(model_config_text(root, mount), encoding="utf-8")
    (root / MONITORING_FILE).write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n',
                                        encoding="utf-8")
    return config


def next_version(base_path: str | os.PathLike) -> int:
    """One more than the highest integer directory under `base_path` (tests add versions this way)."""
    versions = [int(p.name) for p in Path(base_path).iterdir() if p.name.isdigit()] if Path(base_path).exists() else []
    return max(versions, default=0) + 1


def copy_model(src: str | os.PathLike, base_path: str | os.PathLike, version: int) -> Path:
    """Copy a SavedModel directory into `base_path/version`, atomically."""
    tmp, final = _atomic_version_dir(base_path, version)
    shutil.copytree(src, tmp)
    os.rename(tmp, final)
    return final


# ---------------------------------------------------------------------------------------------
# A server to test against: this one in process, or an external one (e.g. tensorflow/serving)

GRPC_ENV = "FRAUD_SERVING_GRPC"
REST_ENV = "FRAUD_SERVING_REST"
MODEL_DIR_ENV = "FRAUD_SERVING_MODEL_DIR"


@dataclass
class ServingTarget:
    """Where the serving tests send requests. `server` is None when the server is external."""

    grpc: str  # host:port
    rest: str  # http://host:port
    model_dir: Path  # where the test models live (tests add versions here)
    server: Any = None

    @property
    def external(self) -> bool:
        return self.server is None


def external_target(environ: Mapping[str, str]) -> ServingTarget | None:
    """The external server named by FRAUD_SERVING_GRPC / _REST / _MODEL_DIR, or None when unset."""
    values = {k: environ.get(k, "") for k in (GRPC_ENV, REST_ENV, MODEL_DIR_ENV)}
    if not any(values.values()):
        return None
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise ValueError(f"to test an external server set all of {GRPC_ENV}, {REST_ENV}, {MODEL_DIR_ENV}; "
                         f"missing: {', '.join(missing)}")
    model_dir = Path(values[MODEL_DIR_ENV])
    if not (model_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{MODEL_DIR_ENV}={model_dir}: no {CONFIG_FILE}; create the models with "
                         f"`python -m serving.testing {model_dir}` before starting the server")
    return ServingTarget(grpc=values[GRPC_ENV], rest=values[REST_ENV].rstrip("/"), model_dir=model_dir)


def local_config(model_dir: Path, **overrides: Any) -> Any:
    """The ServerConfig the tests run this server with: ephemeral ports, 1 s polling, no load retries,
    labels allowed before their versions load, Prometheus on the REST port."""
    from serving.config import PROMETHEUS_DEFAULT_PATH, ServerConfig, parse_model_server_config

    config = model_dir / CONFIG_FILE
    settings: dict[str, Any] = dict(
        models=parse_model_server_config(config.read_text(encoding="utf-8"), str(config)),
        port=0, rest_api_port=0, file_system_poll_wait_seconds=1, max_num_load_retries=0,
        allow_version_labels_for_unavailable_models=True, monitoring_path=PROMETHEUS_DEFAULT_PATH,
    )
    settings.update(overrides)
    return ServerConfig(**settings)


@contextlib.contextmanager
def serving_target(workdir: str | os.PathLike, environ: Mapping[str, str] | None = None,
                   **overrides: Any) -> Iterator[ServingTarget]:
    """The external server if the environment names one, else this server started in process on the
    test models (written under `workdir`) and stopped on exit."""
    target = external_target(os.environ if environ is None else environ)
    if target is not None:
        yield target
        return
    from serving.server import ModelServer

    model_dir = Path(workdir)
    write_test_models(model_dir)
    server = ModelServer(local_config(model_dir, **overrides)).start()
    try:
        yield ServingTarget(grpc=f"127.0.0.1:{server.grpc_port}", rest=f"http://127.0.0.1:{server.rest_port}",
                            model_dir=model_dir, server=server)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m serving.testing DIR [MOUNT]   (MOUNT: DIR's path inside the server container)",
              file=sys.stderr)
        return 2
    root = Path(argv[0])
    mount = argv[1] if len(argv) > 1 else None
    config = write_test_models(root, mount)
    inside = mount or str(root.resolve())
    print(f"wrote the test models, {config} and {root / MONITORING_FILE}")
    print("serve them with TF Serving, e.g. (deploy/compose/serving-tests.yaml does the same):\n"
          f"  docker run --rm -p 8500:8500 -p 8501:8501 -v {root.resolve()}:{inside}:ro --entrypoint tensorflow_model_server "
          "tensorflow/serving:2.16.1 \\\n"
          f"    --port=8500 --rest_api_port=8501 --model_config_file={inside}/{CONFIG_FILE} "
          f"--monitoring_config_file={inside}/{MONITORING_FILE} \\\n"
          "    --file_system_poll_wait_seconds=1 --allow_version_labels_for_unavailable_models=true --max_num_load_retries=0\n"
          "then run the tests against it:\n"
          f"  {GRPC_ENV}=127.0.0.1:8500 {REST_ENV}=http://127.0.0.1:8501 {MODEL_DIR_ENV}={root.resolve()} "
          ".venv/bin/python -m pytest tests/test_serving_api.py tests/test_serving_lifecycle.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())

