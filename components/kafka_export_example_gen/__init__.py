"""ExampleGen for `fraudctl export` spans: reads `{SPAN}` snapshots of a Kafka topic (Kafka Connect
storage-sink layout, JSON lines or Avro), refuses a span without its success marker, drops unlabeled
rows with a count, and splits by event time (the most recent rows are evaluated)."""

from components.kafka_export_example_gen.component import KafkaExportExampleGen

__all__ = ["KafkaExportExampleGen"]
