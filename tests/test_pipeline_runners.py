"""The Beam runner: its arguments per runner, and (slow) a whole run with BeamDagRunner on the sample."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fraud import signature
from fraud.dataset import iter_rows
from fraud.paths import SAMPLE_CSV, Paths
from fraud.replay import CardPool, transaction_event
from fraud.topics import TRANSACTIONS
from pipeline.beam_runner import beam_args


def test_beam_args_per_runner() -> None:
    assert beam_args() == ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=0"]
    assert beam_args("flink", flink_master="jm:8081", environment_type="LOOPBACK") == [
        "--runner=FlinkRunner", "--flink_master=jm:8081", "--parallelism=-1", "--environment_type=LOOPBACK"]
    assert beam_args("spark", spark_master_url="spark://m:7077")[:2] == ["--runner=SparkRunner",
                                                                         "--spark_master_url=spark://m:7077"]
    dataflow = beam_args("dataflow", project="p", region="r", temp_location="gs://b/tmp")
    assert "--runner=DataflowRunner" in dataflow and "--temp_location=gs://b/tmp" in dataflow
    with pytest.raises(ValueError, match="--project, --region"):
        beam_args("dataflow", temp_location="gs://b/tmp")
    with pytest.raises(ValueError, match="flink-master"):
        beam_args("flink")
    with pytest.raises(ValueError, match="unknown runner"):
        beam_args("samza")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_beam_dag_runner_runs_the_pipeline(tmp_path) -> None:
    from pipeline import beam_runner
    from pipeline.export import write_span
    from pipeline.pipeline import Gates, SplitFractions, TrainingSettings

    paths = Paths(home=tmp_path / "home", cache=tmp_path / "cache")
    cards = CardPool()
    write_span(paths.exports_dir, 1, TRANSACTIONS.name,
               ((r.index % 2, r.index // 2, replace(transaction_event(r, cards), label=r.label))
                for r in iter_rows(SAMPLE_CSV)))
    beam_runner.run(paths, args=beam_args(workers=2), splits=SplitFractions(0.5, 0.2, 0.3),
                    gates=Gates(min_auprc=0.1), infra_validation="none",
                    training=TrainingSettings(kinds=("autoencoder", "supervised"),
                                              configs={"autoencoder": {"seeds": 1, "epochs": 5},
                                                       "supervised": {"seeds": 1, "epochs": 5}}))
    assert (paths.serving_model_dir / signature.DEFAULT_MODEL_NAME / "1" / "saved_model.pb").exists()
