"""Continuous training on a real Kafka broker: two cycles of `fraudctl train --watch`'s loop.

Cycle 1: the first 6,000 rows of the shipped sample arrive on the topic; the watcher sees enough new
events, exports span 1, trains (one kind, from scratch: nothing blessed yet), the Evaluator blesses it
and version 1 is pushed. Cycle 2: the remaining 3,000 rows arrive; span 2 is exported and the pipeline
trains on the rolling window of both spans, warm-started from version 1's model, but with a
deliberately bad setting (a negative learning rate: one epoch of gradient *ascent* on the loss turns
the warm-started ranking around): the Evaluator refuses it against the serving model and nothing is
pushed. (A learning rate of 5 was tried first: one epoch of it from the warm start was not worse, and
the model was pushed.) Before each cycle, a poll with too few new
events starts nothing.

Slow suite: about 6-10 minutes on a busy 2-core machine (two pipeline runs).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from kafka import KafkaProducer

from fraud import signature
from fraud.dataset import iter_rows
from fraud.model_info import read_model_info
from fraud.paths import SAMPLE_CSV, Paths
from fraud.replay import CardPool, transaction_event
from pipeline import local_runner
from pipeline.continuous import ContinuousTrainer, WatchPolicy, pending_events
from pipeline.export import KafkaExportSource
from pipeline.pipeline import INFRA_NONE, Gates, SplitFractions, TrainingSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

SPLITS = SplitFractions(train=0.5, validation=0.2, eval=0.3)
GOOD = TrainingSettings(kinds=("supervised",), configs={"supervised": {"seeds": 2, "epochs": 8}})
#: Same architecture (so it warm-starts), made worse by climbing the loss for one epoch.
BAD = TrainingSettings(kinds=("supervised",), configs={"supervised": {"seeds": 2, "epochs": 1, "learning_rate": -0.01}})


def _produce(config, topic: str, rows: list) -> None:
    cards = CardPool()
    producer = KafkaProducer(**config.producer_kwargs(acks="all"))
    for row in rows:
        event = replace(transaction_event(row, cards), label=row.label)
        producer.send(topic, key=event.transaction_id.encode(), value=event.to_json(), partition=row.index % 2)
    producer.flush(timeout=60)
    producer.close()


def test_two_cycles_warm_start_and_a_worse_model_is_not_pushed(kafka_client_config, kafka_topic, tmp_path) -> None:
    topic = kafka_topic(partitions=2)
    paths = Paths(home=tmp_path / "home", cache=tmp_path / "cache")
    rows = list(iter_rows(SAMPLE_CSV))
    settings = {"training": GOOD}

    def run_pipeline(window_spans: int) -> None:
        local_runner.run(paths, topic=topic, window_spans=window_spans, splits=SPLITS, gates=Gates(min_auprc=0.1),
                         infra_validation=INFRA_NONE, **settings)

    source = KafkaExportSource(kafka_client_config)
    lines: list[str] = []
    try:
        watcher = ContinuousTrainer(paths, topic, WatchPolicy(min_new_events=2000, period_s=3600, poll_s=1,
                                                              window_spans=2), source, run_pipeline, log=lines.append)
        _produce(kafka_client_config, topic, rows[:1000])
        assert watcher.step() is None  # 1,000 new events < 2,000: no cycle
        _produce(kafka_client_config, topic, rows[1000:6000])
        first = watcher.step()
        assert first is not None and first.trigger == "events" and first.span == 1 and first.rows == 6000
        assert first.selected == "supervised" and first.blessed and first.pushed_version == "1"
        assert first.warm_started == {"supervised": False}
        assert pending_events(source, paths.exports_dir, topic) == 0

        settings["training"] = BAD
        _produce(kafka_client_config, topic, rows[6000:])
        second = watcher.step()
        assert second is not None and second.span == 2 and second.rows == 3000
        assert second.warm_started == {"supervised": True}
        assert not second.blessed and second.pushed_version is None
    finally:
        source.close()
    pushed = paths.serving_model_dir / signature.DEFAULT_MODEL_NAME
    assert sorted(p.name for p in pushed.iterdir()) == ["1"]
    # The second run's Trainer really started from the pushed model's weights.
    trainer_models = sorted((paths.pipeline_root / "Trainer_supervised" / "model").iterdir(), key=lambda p: int(p.name))
    info = read_model_info(str(trainer_models[-1] / "Format-Serving"))
    assert info["warm_started_from"] and "Trainer_supervised" in info["warm_started_from"]
    assert any("cycle 2" in line and "nothing pushed" in line for line in lines), lines
