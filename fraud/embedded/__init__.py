"""The embedded Apache Kafka broker and Kafka Connect, fetched from Maven Central."""
