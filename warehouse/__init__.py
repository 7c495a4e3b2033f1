"""Storage: the warehouse the scores and labels land in (DuckDB locally, BigQuery in production) and the
sink service that writes them there exactly once (`fraudctl sink run`)."""
