"""Shared core of the project: feature definitions, the Kafka event contract, settings, the dataset,
the embedded Apache Kafka broker and the `fraudctl` command line."""
