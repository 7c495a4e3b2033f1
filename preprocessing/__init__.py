"""Ingestion (Kafka Connect) and the rule-driven stream preprocessing job (validate, filter, anonymize)."""
