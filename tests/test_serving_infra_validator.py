"""LocalInfraValidator: the executor's Do() for real (model served by `python -m serving`, requests over
gRPC), the InfraBlessing it writes, and the stock Pusher shipping the warm-up file it makes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

tf = pytest.importorskip("tensorflow")
from tfx.components.pusher import executor as pusher_executor  # noqa: E402
from tfx.proto import infra_validator_pb2, pusher_pb2  # noqa: E402
from tfx.types import artifact_utils, channel_utils, standard_artifacts  # noqa: E402
from tfx.utils import proto_utils  # noqa: E402
from tfx.v1.components import Pusher  # noqa: E402

from components.infra_validator import LocalInfraValidator, build_for_pipeline  # noqa: E402
from components.infra_validator import spec as keys  # noqa: E402
from components.infra_validator.executor import Executor  # noqa: E402
from fraud.features import LABEL_KEY  # noqa: E402
from fraud.signature import DECISION, INPUT_EXAMPLES, SCORE, SIGNATURE_NAME, THRESHOLD  # noqa: E402
from serving import testing  # noqa: E402


def _examples(root: Path, n: int = 4) -> standard_artifacts.Examples:
    """An Examples artifact as ExampleGen writes it: gzipped TFRecords of tf.Example per split."""
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split in ("train", "eval"):
        directory = root / "examples" / f"Split-{split}"
        directory.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(directory / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
            for i in range(n):
                writer.write(testing.example(seed=i, extra={LABEL_KEY: i % 2}))
    return examples


def _model(root: Path, save) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.uri = str(root / "model")
    serving_dir = root / "model" / "Format-Serving"
    version_dir = save(root / "staging")
    serving_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(version_dir, serving_dir)
    return model


def _run(tmp_path: Path, model: standard_artifacts.Model, examples, num_examples: int = 3):
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(tmp_path / "blessing")
    Path(blessing.uri).mkdir()
    request_spec = infra_validator_pb2.RequestSpec(
        tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(
            signature_names=[SIGNATURE_NAME, "classify", "regress"]),
        split_name="eval", num_examples=num_examples, make_warmup=True)
    exec_properties = {
        keys.REQUEST_SPEC_KEY: proto_utils.proto_to_json(request_spec),
        keys.VALIDATION_SPEC_KEY: proto_utils.proto_to_json(infra_validator_pb2.ValidationSpec(
            max_loading_time_seconds=240)),
        keys.MODEL_NAME_KEY: "fraud",
    }
    Executor().Do({keys.MODEL_KEY: [model], keys.EXAMPLES_KEY: [examples]}, {keys.BLESSING_KEY: [blessing]},
                  exec_properties)
    report = json.loads((Path(blessing.uri) / keys.REPORT_FILE).read_text())
    return blessing, report


def test_a_good_model_is_blessed_and_the_stock_pusher_ships_its_warmup_file(tmp_path):
    examples = _examples(tmp_path)
    model = _model(tmp_path, lambda base: testing.save_examples_model(base, 1))
    blessing, report = _run(tmp_path, model, examples)
    assert report["blessed"] is True, report
    assert report["mode"] == "LOAD_AND_QUERY" and report["requests"] == 9  # 3 examples x 3 signatures
    assert report["failures"] == [] and report["warmup_records"] == 9
    assert (Path(blessing.uri) / keys.BLESSED_FILE).exists()
    assert blessing.get_int_custom_property(keys.BLESSED_PROPERTY) == 1
    assert blessing.get_int_custom_property(keys.HAS_MODEL_PROPERTY) == 1
    stamped = Path(blessing.uri) / "stamped_model"
    from tensorflow_serving.apis import prediction_log_pb2

    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(str(stamped / "assets.extra" / "tf_serving_warmup_requests"))]
    assert sorted(r.WhichOneof("log_type") for r in records) == ["classify_log"] * 3 + ["predict_log"] * 3 + \
        ["regress_log"] * 3
    predict = [r.predict_log.request for r in records if r.HasField("predict_log")][0]
    assert list(predict.inputs) == [INPUT_EXAMPLES]

    # The stock Pusher accepts the blessing alone and pushes the warmed copy.
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
        base_directory=str(tmp_path / "serving" / "fraud")))
    pusher_executor.Executor().Do({"infra_blessing": [blessing]}, {"pushed_model": [pushed]},
                                  {"push_destination": proto_utils.proto_to_json(destination)})
    [version] = os.listdir(tmp_path / "serving" / "fraud")
    assert (tmp_path / "serving" / "fraud" / version / "assets.extra" / "tf_serving_warmup_requests").is_file()


def _unbounded_model(base: Path) -> Path:
    """The project's signature, but `score` is not a probability: must not be blessed."""

    class Unbounded(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_EXAMPLES)])
        def serve(self, examples):
            n = tf.shape(examples)[0]
            return {SCORE: tf.fill([n], 3.5), DECISION: tf.ones([n], tf.int64), THRESHOLD: tf.fill([n], 0.5)}

    module = Unbounded()
    base.mkdir(parents=True)
    tf.saved_model.save(module, str(base / "1"), signatures={SIGNATURE_NAME: module.serve})
    return base / "1"


def test_ill_formed_answers_are_not_blessed(tmp_path):
    examples = _examples(tmp_path)
    model = _model(tmp_path, _unbounded_model)
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = str(tmp_path / "blessing")
    Path(blessing.uri).mkdir()
    request_spec = infra_validator_pb2.RequestSpec(
        tensorflow_serving=infra_validator_pb2.TensorFlowServingRequestSpec(signature_names=[SIGNATURE_NAME]),
        split_name="eval", num_examples=2, make_warmup=True)
    Executor().Do({keys.MODEL_KEY: [model], keys.EXAMPLES_KEY: [examples]}, {keys.BLESSING_KEY: [blessing]},
                  {keys.REQUEST_SPEC_KEY: proto_utils.proto_to_json(request_spec)})
    report = json.loads((Path(blessing.uri) / keys.REPORT_FILE).read_text())
    assert report["blessed"] is False
    assert any("outside [0, 1]" in f for f in report["failures"])
    assert (Path(blessing.uri) / keys.NOT_BLESSED_FILE).exists()
    assert blessing.get_int_custom_property(keys.BLESSED_PROPERTY) == 0
    assert not (Path(blessing.uri) / "stamped_model").exists()
    assert not pusher_executor.Executor().CheckBlessing({"infra_blessing": [blessing]})


def _unloadable_model(base: Path) -> Path:
    """Signatures readable (requests can be built), variables gone: the server cannot load it."""
    version = testing.save_examples_model(base, 1)
    for data in (version / "variables").glob("variables.data-*"):
        data.write_bytes(b"truncated")
    return version


def test_a_model_the_server_cannot_load_is_not_blessed(tmp_path):
    examples = _examples(tmp_path)
    model = _model(tmp_path, _unloadable_model)
    blessing, report = _run(tmp_path, model, examples, num_examples=1)
    assert report["blessed"] is False
    assert report["load_seconds"] is None  # never became available
    assert any("exited" in f for f in report["failures"]), report["failures"]
    assert "did not become available" in report["server_log_tail"]
    assert blessing.get_int_custom_property(keys.BLESSED_PROPERTY) == 0
    assert not (Path(blessing.uri) / "stamped_model").exists()


def test_component_wiring_matches_the_stock_infra_validator():
    model = channel_utils.as_channel([standard_artifacts.Model()])
    examples = channel_utils.as_channel([standard_artifacts.Examples()])
    component = build_for_pipeline(model=model, examples=examples, split_name="eval", num_examples=10)
    assert isinstance(component, LocalInfraValidator)
    assert component.outputs[keys.BLESSING_KEY].type == standard_artifacts.InfraBlessing
    stored = component.exec_properties[keys.REQUEST_SPEC_KEY]
    request_spec = stored if isinstance(stored, infra_validator_pb2.RequestSpec) else \
        proto_utils.json_to_proto(stored, infra_validator_pb2.RequestSpec())
    assert request_spec.make_warmup and request_spec.split_name == "eval" and request_spec.num_examples == 10
    assert list(request_spec.tensorflow_serving.signature_names) == [SIGNATURE_NAME]
    pusher = Pusher(infra_blessing=component.outputs[keys.BLESSING_KEY],
                    push_destination=pusher_pb2.PushDestination(
                        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory="/tmp/x")))
    assert pusher.inputs["infra_blessing"] is component.outputs[keys.BLESSING_KEY]
