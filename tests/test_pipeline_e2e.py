"""End to end: the whole TFX pipeline with LocalDagRunner on the shipped sample, three runs.

1. A good span: every component executes, a model is blessed and pushed as version 1, and the pushed
   SavedModel answers its signature for raw tf.Examples.
2. (slow) The same span with a deliberately worse configuration (models that see only Amount and
   time): nothing is blessed, nothing is pushed (the data components come from the cache).
3. A new span with values outside the curated schema: the run stops at data validation, says why,
   and no model is trained or pushed.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from fraud import signature, spans
from fraud.dataset import iter_rows
from fraud.features import FEATURE_NAMES
from fraud.model_info import read_model_info
from fraud.paths import SAMPLE_CSV, Paths
from fraud.replay import CardPool, transaction_event
from fraud.topics import TRANSACTIONS
from pipeline import local_runner
from pipeline.export import write_span
from pipeline.pipeline import MODEL_KINDS, Gates, SplitFractions, TrainingSettings
from pipeline.report import write_report

SPLITS = SplitFractions(train=0.5, validation=0.2, eval=0.3)  # the sample's frauds sit early in its window
GATES = Gates(min_auprc=0.1, max_auprc_drop=0.02)
#: Small models: this test is about the mechanics; model quality is bench/bench_pipeline.py's business.
TRAINING = TrainingSettings(configs={
    "autoencoder": {"seeds": 2, "epochs": 10}, "supervised": {"seeds": 2, "epochs": 10}, "gbt": {"num_trees": 50},
    "hybrid": {"ae_seeds": 1, "ae_epochs": 5, "seeds": 1, "epochs": 10}})
#: TFX and Beam start-up dominate; on a busy 2-core machine one pipeline run can take 10 minutes.
pytestmark = pytest.mark.timeout(2400)
EXPECTED_NODES = {
    "KafkaExportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataValidationGate",
    "Transform", *(f"Trainer_{k}" for k in MODEL_KINDS), *(f"base_model_{k}" for k in MODEL_KINDS),
    "ModelSelector", "serving_model", "Evaluator", "ModelScorecard", "LocalInfraValidator", "Pusher",
}


def _sample_records(corrupt_every: int = 0):
    cards = CardPool()
    for i, row in enumerate(iter_rows(SAMPLE_CSV)):
        features = dict(row.features)
        if corrupt_every and i % corrupt_every == 0:
            features["V3"] = 5_000.0  # far outside the curated range of V3
        ev = replace(transaction_event(row, cards), features=features, label=row.label)
        yield i % 2, i // 2, ev


class _Mlmd:
    def __init__(self, paths: Paths) -> None:
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = str(paths.metadata_path)
        self.store = metadata_store.MetadataStore(config)

    def runs(self) -> list[dict[str, str]]:
        """Per pipeline run (oldest first): node id -> state of its execution in that run."""
        node_of = {}
        for ctx in self.store.get_contexts_by_type("node"):
            for e in self.store.get_executions_by_context(ctx.id):
                node_of[e.id] = ctx.name.split(".")[-1]
        out = []
        for run in sorted(self.store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id):
            executions = sorted(self.store.get_executions_by_context(run.id), key=lambda e: e.id)
            out.append({node_of[e.id]: metadata_store_pb2.Execution.State.Name(e.last_known_state)
                        for e in executions})
        return out

    def artifacts(self, type_name: str) -> list[metadata_store_pb2.Artifact]:
        return sorted(self.store.get_artifacts_by_type(type_name), key=lambda a: a.id)


def _raw_examples(n: int) -> tuple[list[bytes], list[int]]:
    examples, labels = [], []
    rows = list(iter_rows(SAMPLE_CSV))
    chosen = [r for r in rows if r.label == 1][:n // 2] + [r for r in rows if r.label == 0][:n - n // 2]
    for row in chosen:
        feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[row.features[k]])) for k in FEATURE_NAMES}
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        labels.append(row.label)
    return examples, labels


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """An installation with one good span, after one pipeline run."""
    home = tmp_path_factory.mktemp("fraud-home")
    paths = Paths(home=home, cache=home / "cache")
    write_span(paths.exports_dir, 1, TRANSACTIONS.name, _sample_records())
    local_runner.run(paths, splits=SPLITS, gates=GATES, training=TRAINING, enable_cache=True)  # infra validation on
    return paths


def _versions(paths: Paths) -> list[str]:
    return sorted(p.name for p in (paths.serving_model_dir / signature.DEFAULT_MODEL_NAME).iterdir())


def test_first_run_executes_everything_and_pushes_version_1(first_run: Paths) -> None:
    mlmd = _Mlmd(first_run)
    run1 = mlmd.runs()[0]
    assert EXPECTED_NODES <= set(run1), f"missing executions: {EXPECTED_NODES - set(run1)}"
    assert {run1[n] for n in EXPECTED_NODES} == {"COMPLETE"}, run1
    assert _versions(first_run) == ["1"]
    pushed = mlmd.artifacts("PushedModel")[0]
    assert pushed.custom_properties["pushed"].int_value == 1
    assert pushed.custom_properties["pushed_version"].string_value == "1"
    (verdict,) = [b for b in mlmd.artifacts("ModelBlessing") if "/Evaluator/" in b.uri]
    assert verdict.custom_properties["blessed"].int_value == 1
    (selection,) = [m for m in mlmd.artifacts("Model") if "/ModelSelector/" in m.uri]
    selected = selection.custom_properties["selected_model"].string_value
    assert selected in MODEL_KINDS
    # Chosen by validation AUPRC, recorded for every candidate.
    validation = {k: selection.custom_properties[f"{k}_validation_auprc"].double_value for k in MODEL_KINDS}
    assert validation[selected] == max(validation.values())
    # First run: no serving model yet, so nothing to warm-start from.
    for kind in MODEL_KINDS:
        trainer_model = next(m for m in mlmd.artifacts("Model") if f"/Trainer_{kind}/" in m.uri)
        assert read_model_info(trainer_model.uri + "/Format-Serving")["warm_started_from"] is None

    # The pushed model answers its signature for raw examples (no label, Transform inside).
    version_dir = first_run.serving_model_dir / signature.DEFAULT_MODEL_NAME / "1"
    serve = tf.saved_model.load(str(version_dir)).signatures[signature.SIGNATURE_NAME]
    examples, labels = _raw_examples(40)
    out = {k: v.numpy() for k, v in serve(**{signature.INPUT_EXAMPLES: tf.constant(examples)}).items()}
    assert set(signature.REQUIRED_OUTPUTS) <= set(out)
    score = out[signature.SCORE]
    assert score.shape == (40,) and ((score >= 0) & (score <= 1)).all()
    info = read_model_info(str(version_dir))
    assert info["model"] == selected
    np.testing.assert_allclose(out[signature.THRESHOLD], info["threshold"], rtol=1e-6)
    np.testing.assert_array_equal(out[signature.DECISION], (score >= info["threshold"]).astype(np.int64))
    if selected != "gbt":  # trees serve no per-feature attribution
        assert out[signature.FEATURE_CONTRIBUTIONS].shape == (40, len(FEATURE_NAMES))
    assert info["threshold_target"]["kind"] in ("precision", "alert_rate")
    # Infra validation ran the model in the project's server and shipped its requests as warm-up.
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    # Frauds rank above normal transactions on these rows (the model learned something).
    assert score[np.array(labels) == 1].mean() > score[np.array(labels) == 0].mean()


def test_report_of_the_first_run(first_run: Paths) -> None:
    path = write_report(first_run.metadata_path, first_run.reports_dir)
    page = path.read_text()
    assert (first_run.reports_dir / "pipeline-latest.html").read_text() == page
    assert "Pushed as version 1" in page
    assert page.count("data:image/png;base64,") >= 3  # PR curve, score histogram, calibration plot
    for text in ("precision @ shipped", "(shipped)", "amount_band = 2 (10-100)", "hour_of_day = ", "Anomalies",
                 "None.", "Feature statistics by split", "rows_unlabeled_dropped", "Every candidate on the eval split",
                 "recall @ 1% FPR", "95% low", "(selected)", "Model selected on validation"):
        assert text in page, text


@pytest.mark.slow
def test_a_deliberately_worse_model_is_not_blessed(first_run: Paths) -> None:
    """Same span, models that see only Amount and time: the change threshold against the latest
    blessed model (and the value threshold) refuse them; nothing is pushed."""
    worse = TrainingSettings(kinds=("autoencoder", "supervised"), configs={
        "autoencoder": {"exclude_kinds": ["zscore", "time_of_day"], "seeds": 1, "epochs": 2},
        "supervised": {"exclude_kinds": ["zscore"], "seeds": 1, "epochs": 2}})
    runs_before = len(_Mlmd(first_run).runs())
    local_runner.run(first_run, splits=SPLITS, gates=GATES, enable_cache=True, infra_validation="none",
                     training=worse)
    mlmd = _Mlmd(first_run)
    run = mlmd.runs()[runs_before]
    assert run["Transform"] == "CACHED" and run["Trainer_supervised"] == "COMPLETE"
    verdicts = [b for b in mlmd.artifacts("ModelBlessing") if "/Evaluator/" in b.uri]
    assert verdicts[-1].custom_properties["blessed"].int_value == 0
    assert _versions(first_run) == ["1"]
    assert mlmd.artifacts("PushedModel")[-1].custom_properties["pushed"].int_value == 0


def test_a_span_breaking_the_schema_stops_the_run_before_training(first_run: Paths) -> None:
    runs_before = len(_Mlmd(first_run).runs())
    bad = spans.span_dir(first_run.exports_dir, 2)
    write_span(first_run.exports_dir, 2, TRANSACTIONS.name, _sample_records(corrupt_every=50))
    try:
        with pytest.raises(RuntimeError, match=r"data validation failed.*feature V3"):
            local_runner.run(first_run, splits=SPLITS, gates=GATES, training=TRAINING, enable_cache=True)
    finally:
        shutil.rmtree(bad)
    run = _Mlmd(first_run).runs()[runs_before]
    assert run["ExampleValidator"] == "COMPLETE" and run["DataValidationGate"] == "FAILED"
    assert not {"Transform", "Trainer_autoencoder", "Trainer_supervised", "Trainer_gbt", "Pusher"} & set(run)
    assert _versions(first_run) == ["1"]
    page = write_report(first_run.metadata_path, first_run.reports_dir).read_text()
    assert "The run stopped: DataValidationGate failed." in page
    assert "split train: feature V3: " in page


def test_pushed_model_answers_predict_on_both_signatures_classify_and_regress(first_run: Paths) -> None:
    """The pushed model in the project's TF Serving-compatible server, called with the official
    tensorflow_serving.apis client: Predict on serving_default (tf.Examples) and serving_features
    (float32 [N, 30] as tensor_content), Classify and Regress all give the same score."""
    import grpc
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2

    from serving.config import ModelConfig, ServerConfig
    from serving.server import ModelServer

    version_dir = first_run.serving_model_dir / signature.DEFAULT_MODEL_NAME / "1"
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for k, v in proto.meta_graphs[0].signature_def.items()}
    assert methods[signature.CLASSIFY_SIGNATURE_NAME] == "tensorflow/serving/classify"
    assert methods[signature.REGRESS_SIGNATURE_NAME] == "tensorflow/serving/regress"
    assert methods[signature.FEATURES_SIGNATURE_NAME] == methods[signature.SIGNATURE_NAME] == "tensorflow/serving/predict"

    examples, _ = _raw_examples(16)
    rows = list(examples)  # serialized tf.Examples
    features = np.array([[tf.train.Example.FromString(e).features.feature[n].float_list.value[0] for n in FEATURE_NAMES]
                         for e in rows], dtype=np.float32)
    config = ServerConfig(models=(ModelConfig(name=signature.DEFAULT_MODEL_NAME,
                                              base_path=str(first_run.serving_model_dir / signature.DEFAULT_MODEL_NAME)),),
                          port=0, rest_api_port=None, enable_signature_method_name_check=True)
    server = ModelServer(config).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            by_examples = predict_pb2.PredictRequest()
            by_examples.model_spec.name = signature.DEFAULT_MODEL_NAME
            by_examples.inputs[signature.INPUT_EXAMPLES].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
            a = stub.Predict(by_examples, timeout=60)
            by_features = predict_pb2.PredictRequest()
            by_features.model_spec.name = signature.DEFAULT_MODEL_NAME
            by_features.model_spec.signature_name = signature.FEATURES_SIGNATURE_NAME
            by_features.inputs[signature.INPUT_FEATURES].CopyFrom(tf.make_tensor_proto(features))
            assert by_features.inputs[signature.INPUT_FEATURES].tensor_content  # sent as tensor_content
            b = stub.Predict(by_features, timeout=60)
            score_a = tf.make_ndarray(a.outputs[signature.SCORE])
            score_b = tf.make_ndarray(b.outputs[signature.SCORE])
            np.testing.assert_allclose(score_a, score_b, rtol=1e-5, atol=1e-7)
            assert set(a.outputs) == set(b.outputs)

            classify = classification_pb2.ClassificationRequest()
            classify.model_spec.name = signature.DEFAULT_MODEL_NAME
            classify.model_spec.signature_name = signature.CLASSIFY_SIGNATURE_NAME
            for e in rows:
                classify.input.example_list.examples.add().ParseFromString(e)
            c = stub.Classify(classify, timeout=60)
            assert [[cl.label for cl in r.classes] for r in c.result.classifications] == [["0", "1"]] * len(rows)
            np.testing.assert_allclose([r.classes[1].score for r in c.result.classifications], score_a, rtol=1e-5,
                                       atol=1e-7)
            np.testing.assert_allclose([r.classes[0].score + r.classes[1].score for r in c.result.classifications], 1.0,
                                       rtol=1e-6)

            regress = regression_pb2.RegressionRequest()
            regress.model_spec.name = signature.DEFAULT_MODEL_NAME
            regress.model_spec.signature_name = signature.REGRESS_SIGNATURE_NAME
            regress.input.example_list.examples.extend(classify.input.example_list.examples)
            r = stub.Regress(regress, timeout=60)
            np.testing.assert_allclose([x.value for x in r.result.regressions], score_a, rtol=1e-5, atol=1e-7)
    finally:
        server.stop()
