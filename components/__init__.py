"""Custom TFX components (spec, component, executor), e.g. the Kafka-export ExampleGen."""
