"""The bridge service: Kafka transaction events -> TF Serving gRPC Predict -> score events on Kafka."""
