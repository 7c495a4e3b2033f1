"""KafkaExportExampleGen: a FileBasedExampleGen over `fraudctl export` spans.

It is a FileBasedExampleGen subclass on purpose: the stock FileBasedDriver resolves the `{SPAN}`
pattern (latest span, or the RangeConfig's), and the Kubeflow V2 compiler gives FileBasedExampleGens
the same driver step in the cluster.
"""

from __future__ import annotations

from tfx import types
from tfx.components.example_gen import driver
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_artifacts

from components.kafka_export_example_gen import executor
from components.kafka_export_example_gen.spec import KafkaExportExampleGenSpec
from fraud.spans import span_pattern
from fraud.topics import TRANSACTIONS

TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
_PROPORTION_SCALE = 1000


def time_split_config(eval_fraction: float) -> example_gen_pb2.Output:
    """Output splits train/eval; the executor reads hash_buckets as proportions of rows in event-time order."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    eval_buckets = max(1, round(eval_fraction * _PROPORTION_SCALE))
    return example_gen_pb2.Output(
        split_config=example_gen_pb2.SplitConfig(
            splits=[
                example_gen_pb2.SplitConfig.Split(name=TRAIN_SPLIT, hash_buckets=_PROPORTION_SCALE - eval_buckets),
                example_gen_pb2.SplitConfig.Split(name=EVAL_SPLIT, hash_buckets=eval_buckets),
            ]
        )
    )


class KafkaExportExampleGen(FileBasedExampleGen):
    """Reads the latest complete export span of a topic into train/eval tf.Examples.

    Args:
      input_base: the export base directory (`fraudctl export --out`, default FRAUD_HOME/exports).
      topic: the exported topic (a directory inside each span); default fraud.topics.TRANSACTIONS.
      eval_fraction: share of rows, the most recent by event time, that go to the `eval` split.
      output_config: instead of eval_fraction, any splits: hash_buckets are proportions of rows in
        event-time order (first split = oldest rows), never hashes.
      range_config: which span(s) to read (default: the latest one the driver finds).
      window_spans: read this many spans ending with the resolved one as one dataset (exports are
        incremental, so N spans = the last N exports); spans missing from the window (pruned) are
        skipped, one without its marker is refused. The event-time split is over the whole window.
    """

    SPEC_CLASS = KafkaExportExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
    DRIVER_CLASS = driver.FileBasedDriver

    def __init__(
        self,
        input_base: str,
        topic: str = TRANSACTIONS.name,
        eval_fraction: float = 0.2,
        output_config: example_gen_pb2.Output | None = None,
        range_config: range_config_pb2.RangeConfig | None = None,
        window_spans: int = 1,
    ) -> None:
        if window_spans < 1:
            raise ValueError(f"window_spans must be >= 1, got {window_spans}")
        input_config = example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="single_split", pattern=span_pattern(topic))]
        )
        spec = KafkaExportExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config or time_split_config(eval_fraction),
            custom_config=None,
            range_config=range_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            topic=topic,
            window_spans=window_spans,
            examples=types.Channel(type=standard_artifacts.Examples),
        )
        # Skip FileBasedExampleGen.__init__ (it builds its own spec class); keep its type and driver.
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
