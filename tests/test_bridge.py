"""Unit tests of the bridge: the hand-written wire format against TensorFlow's and TF Serving's own
protos, the scorer's logic with a fake Predict (dead letters, bisection, retries, score events), and
config parsing. No broker, no server (tests/test_bridge_integration.py has those)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bridge_helpers import REJECT_ABOVE, malformed_corpus, transaction

from fraud.contract import ScoreEvent, TransactionEvent
from fraud.errors import FraudError
from fraud.features import FEATURE_NAMES
from fraud.signature import DECISION, FEATURE_CONTRIBUTIONS, RECONSTRUCTION_ERROR, SCORE, THRESHOLD
from fraud.stream.config import Delivery
from fraud.stream.metrics import STREAM_METRICS, RecordingMetrics
from fraud.stream.records import Record, RetriableError
from fraud.wire import (
    ExampleBatchEncoder,
    ExampleEncoder,
    TensorInfo,
    decode_model_metadata,
    decode_predict_response,
    encode_float_matrix,
    encode_metadata_request,
    encode_predict_request,
    encode_predict_request_inputs,
)
from kafka_bridge import scoring
from kafka_bridge.config import BridgeConfig
from kafka_bridge.predict import ModelRejected, Prediction, PredictUnavailable


def test_example_encoder_matches_tensorflow_parsing():
    import tensorflow as tf

    rng = np.random.default_rng(7)
    rows = [rng.normal(size=len(FEATURE_NAMES)) * 10.0 ** rng.integers(-3, 6) for _ in range(20)]
    rows.append(np.zeros(len(FEATURE_NAMES)))
    encoder = ExampleEncoder()
    blobs = [encoder.encode(row.tolist()) for row in rows]
    assert {len(b) for b in blobs} == {encoder.size}
    parsed = tf.io.parse_example(blobs, {n: tf.io.FixedLenFeature([], tf.float32) for n in FEATURE_NAMES})
    got = np.stack([parsed[n].numpy() for n in FEATURE_NAMES], axis=1)
    np.testing.assert_array_equal(got, np.array(rows, dtype=np.float32))
    proto = tf.train.Example.FromString(blobs[0])
    assert sorted(proto.features.feature) == sorted(FEATURE_NAMES)  # exactly the features: no label, no ids


@pytest.mark.parametrize("version, label", [(None, None), (3, None), (None, "stable")])
def test_predict_request_is_what_tf_serving_parses(version, label):
    from tensorflow_serving.apis import predict_pb2

    examples = [b"\x00abc", b"", b"x" * 300]
    data = encode_predict_request(examples, model_name="fraud", signature_name="serving_default",
                                  input_key="examples", version=version, version_label=label)
    req = predict_pb2.PredictRequest.FromString(data)
    assert req.model_spec.name == "fraud" and req.model_spec.signature_name == "serving_default"
    assert req.model_spec.WhichOneof("version_choice") == ("version" if version else "version_label" if label else None)
    if version:
        assert req.model_spec.version.value == 3
    if label:
        assert req.model_spec.version_label == "stable"
    tensor = req.inputs["examples"]
    assert tensor.dtype == 7 and [d.size for d in tensor.tensor_shape.dim] == [3]
    assert list(tensor.string_val) == examples


@pytest.mark.parametrize("as_content", [False, True])
def test_predict_response_decoding_matches_tf_serving_protos(as_content):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    score = np.array([0.1, 0.9, 0.5], np.float32)
    contributions = np.arange(90, dtype=np.float32).reshape(3, 30) - 40
    decision = np.array([0, 1, -2], np.int64)
    resp = predict_pb2.PredictResponse()
    resp.model_spec.name = "fraud"
    resp.model_spec.version.value = 42
    for key, arr in ((SCORE, score), (FEATURE_CONTRIBUTIONS, contributions), (DECISION, decision)):
        if as_content:
            resp.outputs[key].CopyFrom(tf.make_tensor_proto(arr))
        else:
            t = resp.outputs[key]
            t.dtype = tf.as_dtype(arr.dtype).as_datatype_enum
            for size in arr.shape:
                t.tensor_shape.dim.add().size = size
            (t.float_val if arr.dtype == np.float32 else t.int64_val).extend(arr.reshape(-1).tolist())
    name, ver, outputs = decode_predict_response(resp.SerializeToString())
    assert (name, ver) == ("fraud", 42)
    np.testing.assert_array_equal(outputs[SCORE], score)
    np.testing.assert_array_equal(outputs[FEATURE_CONTRIBUTIONS], contributions)
    np.testing.assert_array_equal(outputs[DECISION], decision)


def test_example_batch_encoder_writes_what_tensorflow_parses():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rng = np.random.default_rng(3)
    matrix = (rng.normal(size=(9, len(FEATURE_NAMES))) * 10.0 ** rng.integers(-3, 6, size=(9, 1))).astype(np.float32)
    batch = ExampleBatchEncoder()
    examples = batch.examples(matrix)
    assert examples == [ExampleEncoder().encode(row.tolist()) for row in matrix]
    request = predict_pb2.PredictRequest.FromString(encode_predict_request_inputs(
        {"examples": batch.tensor(matrix)}, model_name="fraud", signature_name="serving_default", version=4))
    assert request.model_spec.version.value == 4 and list(request.inputs["examples"].string_val) == examples
    assert [d.size for d in request.inputs["examples"].tensor_shape.dim] == [9]
    parsed = tf.io.parse_example(examples, {n: tf.io.FixedLenFeature([], tf.float32) for n in FEATURE_NAMES})
    np.testing.assert_array_equal(np.stack([parsed[n].numpy() for n in FEATURE_NAMES], axis=1), matrix)
    assert batch.examples(np.zeros((0, len(FEATURE_NAMES)), np.float32)) == []


def test_feature_matrix_request_is_one_tensor_content_block():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    matrix = np.arange(3 * len(FEATURE_NAMES), dtype=np.float32).reshape(3, -1) / 7
    request = predict_pb2.PredictRequest.FromString(encode_predict_request_inputs(
        {"features": encode_float_matrix(matrix)}, model_name="fraud", signature_name="serving_features",
        version_label="canary"))
    tensor = request.inputs["features"]
    assert request.model_spec.signature_name == "serving_features" and request.model_spec.version_label == "canary"
    assert tensor.dtype == tf.float32.as_datatype_enum and len(tensor.tensor_content) == matrix.nbytes
    assert not tensor.float_val
    np.testing.assert_array_equal(tf.make_ndarray(tensor), matrix)


def test_model_metadata_is_read_from_tf_servings_response():
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest.FromString(
        encode_metadata_request("fraud", version=3))
    assert request.model_spec.version.value == 3 and list(request.metadata_field) == ["signature_def"]
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "fraud"
    response.model_spec.version.value = 3
    sigs = get_model_metadata_pb2.SignatureDefMap()
    features = sigs.signature_def["serving_features"]
    features.method_name = "tensorflow/serving/predict"
    features.inputs["features"].dtype = 1
    for size in (-1, len(FEATURE_NAMES)):
        features.inputs["features"].tensor_shape.dim.add().size = size
    features.outputs["score"].dtype = 1
    features.outputs["score"].tensor_shape.dim.add().size = -1
    sigs.signature_def["serving_default"].inputs["examples"].dtype = 7
    sigs.signature_def["serving_default"].inputs["examples"].tensor_shape.unknown_rank = True
    response.metadata["signature_def"].Pack(sigs)
    name, version, signatures = decode_model_metadata(response.SerializeToString())
    assert (name, version, sorted(signatures)) == ("fraud", 3, ["serving_default", "serving_features"])
    assert signatures["serving_features"].inputs["features"] == TensorInfo(1, (-1, len(FEATURE_NAMES)))
    assert signatures["serving_features"].method_name == "tensorflow/serving/predict"
    assert signatures["serving_default"].inputs["examples"] == TensorInfo(7, None)
    from kafka_bridge.predict import features_signature_fits

    assert features_signature_fits(signatures["serving_features"])
    assert not features_signature_fits(signatures["serving_default"])


# -- the scorer with a fake Predict -------------------------------------------------------------


class FakeCall:
    """A Predict already answered (or failed): `result()` returns or raises."""

    def __init__(self, answer) -> None:
        self._answer = answer

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        pass

    def result(self):
        return self._answer()


class FakeModel:
    """Scores the feature matrix like the test model: refuses |x| > REJECT_ABOVE for the whole call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.down = False
        self.reject_all = False
        self.nan_for: set[int] = set()
        self.inputs: list[np.ndarray] = []
        self.max_rows: int | None = None  # a server whose batching takes at most this many rows per request

    def start(self, features: np.ndarray) -> FakeCall:
        assert features.dtype == np.float32 and features.shape[1:] == (len(FEATURE_NAMES),)
        self.calls.append(len(features))
        self.inputs.append(features)
        return FakeCall(lambda: self._answer(features))

    def _answer(self, x: np.ndarray) -> Prediction:
        if self.down:
            raise PredictUnavailable("UNAVAILABLE", "connection refused")
        if self.max_rows is not None and len(x) > self.max_rows:
            raise ModelRejected("INVALID_ARGUMENT", f"Task size {len(x)} is larger than maximum input batch size "
                                                    f"{self.max_rows}")
        if self.reject_all or (np.abs(x) > REJECT_ABOVE).any():
            raise ModelRejected("INVALID_ARGUMENT", "feature value outside the model's range")
        contributions = x / 1000.0
        score = 1 / (1 + np.exp(-contributions.sum(axis=1)))
        for i in self.nan_for:
            if i < len(score):
                score[i] = np.nan
        return Prediction("fraud", 7, {
            SCORE: score.astype(np.float32), DECISION: (score >= 0.5).astype(np.int64),
            THRESHOLD: np.full(len(score), 0.5, np.float32), RECONSTRUCTION_ERROR: (contributions ** 2).sum(axis=1),
            FEATURE_CONTRIBUTIONS: contributions})


def _records(values: list[bytes], topic: str = "fraud.transactions") -> list[Record]:
    return [Record(topic, i % 2, 100 + i, f"k{i}".encode(), v, 1_700_000_000_000 + i) for i, v in enumerate(values)]


def _scorer(model: FakeModel, top_k: int = 3) -> tuple[scoring.Scorer, RecordingMetrics]:
    metrics = RecordingMetrics(STREAM_METRICS + scoring.BRIDGE_METRICS)
    return scoring.Scorer(model.start, output_topic="fraud.scores", metrics=metrics, model_name="cfg-name",
                          explain_top_k=top_k), metrics


def test_valid_events_become_one_score_event_each_keyed_by_transaction_id():
    events = [transaction(i) for i in range(5)]
    model = FakeModel()
    scorer, metrics = _scorer(model)
    result = scorer(_records([e.to_json() for e in events]))
    assert model.calls == [5] and not result.dead_letters
    assert [o.key for o in result.outputs] == [e.transaction_id.encode() for e in events]
    for out, ev in zip(result.outputs, events, strict=True):
        s = ScoreEvent.from_json(out.value)
        assert out.topic == "fraud.scores"
        assert (s.transaction_id, s.card_id, s.event_time_ms) == (ev.transaction_id, ev.card_id, ev.event_time_ms)
        assert s.model_name == "fraud" and s.model_version == 7  # from the response, not the config
        expected = 1 / (1 + math.exp(-sum(np.float32(v) / 1000.0 for v in ev.feature_vector())))
        assert s.score == pytest.approx(expected, rel=1e-5) and s.decision == (s.score >= 0.5)
        assert len(s.explanation) == 3 and s.reconstruction_error is not None
        top = sorted(ev.features, key=lambda n: -abs(ev.features[n]))[:3]
        assert set(s.explanation) == set(top)
        assert s.source_timestamp_ms >= 1_700_000_000_000 and s.scored_at_ms >= s.source_timestamp_ms
    assert metrics.total(scoring.SCORED) == 5


def test_malformed_corpus_all_dead_lettered_with_reasons_and_good_ones_scored():
    corpus = malformed_corpus()
    good = [transaction(i) for i in range(1, 4)]
    values = [v for _, v in corpus] + [e.to_json() for e in good]
    model = FakeModel()
    scorer, _ = _scorer(model)
    records = _records(values)
    result = scorer(records)
    assert sorted(o.key for o in result.outputs) == sorted(e.transaction_id.encode() for e in good)
    by_offset = {d.source_offset: d for d in result.dead_letters}
    assert len(by_offset) == len(corpus)
    for rec, (reason, value) in zip(records, corpus, strict=False):
        d = by_offset[rec.offset]
        assert d.reason == reason, (reason, d.message)
        assert d.value == value and d.key == rec.key and d.source_partition == rec.partition
        assert d.component == "kafka_bridge"
    # model rejection isolated by bisection: a handful of calls, not one per record
    assert len(model.calls) <= 2 * math.ceil(math.log2(len(good) + 1)) + 4


def test_a_server_batch_limit_splits_the_calls_and_dead_letters_nothing(caplog):
    events = [transaction(i) for i in range(5)]
    values = [e.to_json() for e in events]
    model = FakeModel()
    model.max_rows = 2
    scorer, _ = _scorer(model)
    result = scorer(_records(values))
    # refused once for its size (not for its rows: no canary, no bisection), then sent 2 rows at a time
    assert model.calls == [5, 2, 2, 1] and not result.dead_letters
    assert [o.key for o in result.outputs] == [e.transaction_id.encode() for e in events]
    assert scorer.max_rows == 2
    assert [r.getMessage() for r in caplog.records].count("predict_rows_limited") == 1
    model.calls.clear()
    result = scorer(_records(values))
    assert model.calls == [2, 2, 1] and len(result.outputs) == 5  # within the limit from the start
    # a record the model refuses is still isolated within its call
    model.calls.clear()
    bad = transaction(7, V3=2 * REJECT_ABOVE)
    result = scorer(_records(values[:3] + [bad.to_json()] + values[3:]))
    assert [d.reason for d in result.dead_letters] == [scoring.MODEL_REJECTED]
    assert result.dead_letters[0].source_offset == 103 and len(result.outputs) == 5
    assert max(model.calls) <= 2


def test_a_learned_server_batch_limit_is_tried_again_after_its_ttl_so_a_raised_limit_is_used():
    values = [transaction(i).to_json() for i in range(5)]
    model = FakeModel()
    model.max_rows = 2
    now = [0.0]
    scorer = scoring.Scorer(model.start, output_topic="fraud.scores", model_name="cfg-name",
                            metrics=RecordingMetrics(STREAM_METRICS + scoring.BRIDGE_METRICS), clock=lambda: now[0])
    scorer(_records(values))
    assert model.calls == [5, 2, 2, 1] and scorer.max_rows == 2
    now[0] += scoring._ROWS_LIMIT_TTL_S - 1
    model.calls.clear()
    scorer(_records(values))
    assert model.calls == [2, 2, 1]  # still within the learned limit
    now[0] += 1
    model.calls.clear()
    result = scorer(_records(values))
    assert model.calls == [5, 2, 2, 1] and len(result.outputs) == 5  # tried whole, refused, learned again
    now[0] += scoring._ROWS_LIMIT_TTL_S
    model.max_rows = None  # the operator raised the server's max_batch_size
    model.calls.clear()
    result = scorer(_records(values))
    assert model.calls == [5] and scorer.max_rows is None and len(result.outputs) == 5


def test_model_rejecting_everything_is_a_retry_not_dead_letters():
    model = FakeModel()
    model.reject_all = True
    scorer, _ = _scorer(model)
    with pytest.raises(RetriableError, match="refuses even a valid all-zero example"):
        scorer(_records([transaction(1).to_json()]))


def test_server_unavailable_raises_retriable():
    model = FakeModel()
    model.down = True
    scorer, metrics = _scorer(model)
    with pytest.raises(RetriableError):
        scorer(_records([transaction(1).to_json()]))
    assert metrics.total(scoring.PREDICT_ERRORS, code="UNAVAILABLE") == 1


def test_non_finite_model_output_is_dead_lettered():
    model = FakeModel()
    model.nan_for = {1}
    scorer, _ = _scorer(model)
    result = scorer(_records([transaction(i).to_json() for i in range(3)]))
    assert len(result.outputs) == 2
    assert [d.reason for d in result.dead_letters] == [scoring.MODEL_OUTPUT_INVALID]


def test_label_is_never_sent_to_the_model():
    event = transaction(3)
    assert event.label is not None
    model = FakeModel()
    model.down = True
    scorer = scoring.Scorer(model.start, output_topic="s",
                            metrics=RecordingMetrics(STREAM_METRICS + scoring.BRIDGE_METRICS), model_name="m")
    with pytest.raises(RetriableError):
        scorer(_records([event.to_json()]))
    # exactly the 30 features, in fraud.features order, as float32: nothing else of the event
    np.testing.assert_array_equal(model.inputs[0], np.array([event.feature_vector()], dtype=np.float32))


# -- config -------------------------------------------------------------------------------------


def test_config_from_environment_with_defaults_on_loopback():
    cfg = BridgeConfig.from_env_and_args(None, {"FRAUD_BRIDGE_DELIVERY": "exactly_once",
                                                "FRAUD_BRIDGE_INSTANCE_ID": "bridge-3",
                                                "FRAUD_BRIDGE_BATCH_MAX_SIZE": "128",
                                                "FRAUD_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    s = cfg.stream
    assert s.delivery is Delivery.EXACTLY_ONCE and s.transactional_id == "fraud-bridge-bridge-3"
    assert s.batch_max_size == 128 and s.input_topics == ("fraud.transactions",)
    assert s.dlq_topic == "fraud.dlq.bridge" and cfg.output_topic == "fraud.scores"
    assert s.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert s.http_host == "127.0.0.1" and cfg.server.startswith("127.0.0.1:")


@pytest.mark.parametrize("env, message", [
    ({"FRAUD_BRIDGE_SERVER": "nohost"}, "model server address"),
    ({"FRAUD_BRIDGE_MODEL_VERSION": "2", "FRAUD_BRIDGE_MODEL_VERSION_LABEL": "stable"}, "exclusive"),
    ({"FRAUD_BRIDGE_GRPC_CA_FILE": "/nonexistent.pem"}, "TLS is off"),
    ({"FRAUD_BRIDGE_GRPC_TLS": "1", "FRAUD_BRIDGE_GRPC_CA_FILE": "/nonexistent.pem"}, "does not exist"),
    ({"FRAUD_BRIDGE_OUTPUT_TOPIC": "fraud.transactions"}, "also the input"),
])
def test_bad_config_is_one_line_error(env, message):
    with pytest.raises(FraudError, match=message):
        BridgeConfig.from_env_and_args(None, env)


def test_transaction_roundtrip_helper_is_valid():
    assert TransactionEvent.from_json(transaction(5).to_json()).transaction_id == "tx-0000005"


def test_unexpected_parser_exception_is_a_dead_letter_not_a_crash(monkeypatch):
    def boom(data):
        raise RecursionError("deep")

    monkeypatch.setattr(TransactionEvent, "from_json", staticmethod(boom))
    scorer, _ = _scorer(FakeModel())
    result = scorer(_records([b"{}"]))
    assert [d.reason for d in result.dead_letters] == ["malformed_json"]
    assert result.dead_letters[0].exception_class == "RecursionError"


def test_fraudctl_bridge_run_bad_setting_is_one_line_and_exit_1(monkeypatch, capsys):
    from fraudctl.cli import main

    monkeypatch.setenv("FRAUD_BRIDGE_DELIVERY", "twice")
    assert main(["bridge", "run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fraudctl bridge") and "\n" not in err
    assert err.endswith("FRAUD_BRIDGE_DELIVERY='twice': expected one of at_least_once, exactly_once")


def test_python_m_kafka_bridge_bad_flag_is_one_line_and_exit_1(capsys):
    from kafka_bridge.cli import main

    assert main(["--batch-max-size", "0"]) == 1
    assert capsys.readouterr().err.strip() == "kafka_bridge: --batch-max-size='0': must be >= 1"


def test_grpc_tls_uses_a_secure_channel_with_the_given_files(tmp_path, monkeypatch):
    import grpc

    from kafka_bridge.predict import GrpcTls, PredictClient

    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_bytes(f"{name}-bytes".encode())
    made = {}
    monkeypatch.setattr(grpc, "ssl_channel_credentials",
                        lambda root, key, chain: made.setdefault("creds", (root, key, chain)))
    monkeypatch.setattr(grpc, "secure_channel",
                        lambda target, creds, options: made.setdefault("channel", (target, creds, dict(options))))
    tls = GrpcTls(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem", server_name="model.internal")
    with pytest.raises(AttributeError):  # the recorded "channel" is a tuple: no unary_unary; we only check wiring
        PredictClient("model:8500", model_name="fraud", signature_name="s", tls=tls)
    assert made["creds"] == (b"ca-bytes", b"key-bytes", b"cert-bytes")
    target, _, options = made["channel"]
    assert target == "model:8500" and options["grpc.ssl_target_name_override"] == "model.internal"


@pytest.mark.parametrize("k", [1, 5, 30])
def test_top_k_by_magnitude_is_a_stable_argsort_with_ties_and_nan(k):
    rng = np.random.default_rng(11)
    values = rng.normal(size=(300, 30)).astype(np.float32)
    values[:50, :10] = 0.0  # ties among zeros
    values[50:100, 3] = values[50:100, 7] = -values[50:100, 5]  # ties across signs
    values[100:120, 2] = np.nan
    values[120:130] = np.nan
    values[130:140] = np.inf * np.sign(values[130:140])
    want = np.argsort(-np.abs(values.astype(np.float64)), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(scoring.top_k_by_magnitude(values, k), want)


def test_readme_configuration_table_lists_every_flag_with_its_default():
    from pathlib import Path

    from kafka_bridge.config import ENV_PREFIX, all_options

    text = (Path(__file__).resolve().parents[1] / "kafka_bridge" / "README.md").read_text()
    table = text[text.index("## Configuration"):text.index("## Tests and benchmark")]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `--")}
    for opt in all_options():
        assert opt.flag in rows, f"{opt.flag} missing from kafka_bridge/README.md's configuration table"
        assert f"`{opt.env_name(ENV_PREFIX)}`" in rows[opt.flag]
        if opt.default not in (None, "") and not isinstance(opt.default, bool) and opt.name != "instance_id":
            assert f"`{opt.default}`" in rows[opt.flag], (opt.flag, opt.default)
