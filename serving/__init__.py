"""A model server speaking the TF Serving gRPC and REST APIs over a TF Serving model base path."""
