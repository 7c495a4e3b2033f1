"""The curated raw-data schema (schema.pbtxt), imported into the pipeline with ImportSchemaGen."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent
#: The curated schema file; ImportSchemaGen reads it, tests check it against fraud.features.
SCHEMA_FILE = SCHEMA_DIR / "schema.pbtxt"
