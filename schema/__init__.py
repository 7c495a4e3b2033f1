"""The curated raw-data schema (schema.pbtxt), imported into the pipeline with ImportSchemaGen."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
