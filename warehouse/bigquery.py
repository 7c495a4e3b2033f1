"""The warehouse on BigQuery (google-cloud-bigquery), exactly once, with the same interface as DuckDB.

Each sink batch is one query job running a multi-statement transaction:

    BEGIN TRANSACTION;
    MERGE scores USING UNNEST(@scores) ON transaction_id WHEN NOT MATCHED THEN INSERT ...;
    MERGE labels USING UNNEST(@labels) ON transaction_id WHEN MATCHED AND newer THEN UPDATE ...
                                                          WHEN NOT MATCHED THEN INSERT ...;
    MERGE sink_offsets USING UNNEST(@offsets) ON (topic, partition) WHEN MATCHED AND larger THEN UPDATE ...
                                                                   WHEN NOT MATCHED THEN INSERT ...;
    COMMIT TRANSACTION;

When sinks share partitions (`claim`, see warehouse.store), the script starts with a check of the
writer's epochs (`IF EXISTS (... epoch != @epochs ...) THEN RAISE`), which rolls the transaction back;
a concurrent claim and write of one partition are DML on one table in two transactions, and BigQuery
aborts one of them ("concurrent update"), which the sink retries.

The rows travel as query parameters (arrays of structs), not spliced into SQL. Rows and offsets commit
together or not at all, and every statement is idempotent, so a job re-run after an unknown outcome (the
response lost, the sink killed) changes nothing. Why not streaming inserts (`tabledata.insertAll` with
insertId = transaction id): their de-duplication is best effort for about a minute and the offsets cannot
be committed with the rows, so a restart could duplicate or lose rows; DML costs a query job per batch
(seconds of latency), which is why the sink batches up to `batch_max_size` rows.

`api_endpoint` points the client at another server (an emulator, the tests' local fake) and then uses
anonymous credentials; otherwise Application Default Credentials are used, as everywhere on Google Cloud.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from fraud.errors import FraudError
from fraud.logs import log_event
from fraud.stream.records import RetriableError
from warehouse.config import BigQueryConfig
from warehouse.store import (
    LABEL_COLUMNS,
    OFFSET_COLUMNS,
    SCORE_COLUMNS,
    Claim,
    Fenced,
    TopicPartition,
    WarehouseBatch,
    WriteResult,
    fenced_partitions,
    label_row,
    now_ms,
    score_row,
    select_new,
)

log = logging.getLogger("monitoring.bigquery")

_BQ_TYPES = {"VARCHAR": "STRING", "BIGINT": "INT64", "INTEGER": "INT64", "DOUBLE": "FLOAT64", "BOOLEAN": "BOOL"}
#: Client-side errors worth retrying the whole batch for (server-side and network trouble, and transactions
#: that lost a race with a concurrent one).
_RETRIABLE = ("ServiceUnavailable", "InternalServerError", "BadGateway", "GatewayTimeout", "TooManyRequests",
              "ConnectionError", "Timeout", "ReadTimeout", "RetryError")


def _fields(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, _BQ_TYPES[typ]) for name, typ in columns]


def _q(name: str) -> str:
    return f"`{name}`"  # `partition` is a reserved word in BigQuery SQL


#: What the batch script raises when a partition was claimed by another sink (see warehouse.store).
FENCED_MESSAGE = "fraud-sink fenced"


def merge_script(scores: str, labels: str, offsets: str, *, with_scores: bool, with_labels: bool,
                 fenced: bool = False) -> str:
    """The batch's transaction; table names are fully qualified (project.dataset.table). With `fenced`, it
    first checks @epochs against the stored epochs and raises (rolling everything back) on a mismatch."""
    parts = ["BEGIN TRANSACTION;"]
    if fenced:
        parts.append(
            f"IF EXISTS (SELECT 1 FROM UNNEST(@epochs) S LEFT JOIN `{offsets}` T "
            f"ON T.topic = S.topic AND T.`partition` = S.`partition` WHERE IFNULL(T.epoch, 0) != S.epoch) THEN\n"
            f"  RAISE USING MESSAGE = '{FENCED_MESSAGE}';\nEND IF;")
    if with_scores:
        cols = [n for n, _ in SCORE_COLUMNS]
        parts.append(
            f"MERGE `{scores}` T USING (SELECT * FROM UNNEST(@scores)) S ON T.transaction_id = S.transaction_id\n"
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(_q, cols))}) "
            f"VALUES ({', '.join('S.' + _q(c) for c in cols)});")
    if with_labels:
        cols = [n for n, _ in LABEL_COLUMNS]
        updates = ", ".join(f"{_q(c)} = S.{_q(c)}" for c in cols if c != "transaction_id")
        parts.append(
            f"MERGE `{labels}` T USING (SELECT * FROM UNNEST(@labels)) S ON T.transaction_id = S.transaction_id\n"
            f"WHEN MATCHED AND (S.labelled_at_ms > T.labelled_at_ms OR "
            f"(S.labelled_at_ms = T.labelled_at_ms AND S.label != T.label)) THEN UPDATE SET {updates}\n"
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(_q, cols))}) "
            f"VALUES ({', '.join('S.' + _q(c) for c in cols)});")
    cols = [n for n, _ in OFFSET_COLUMNS]
    parts.append(
        f"MERGE `{offsets}` T USING (SELECT * FROM UNNEST(@offsets)) S "
        f"ON T.topic = S.topic AND T.`partition` = S.`partition`\n"
        f"WHEN MATCHED AND S.next_offset > T.next_offset THEN UPDATE SET next_offset = S.next_offset, "
        f"updated_at_ms = S.updated_at_ms\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(_q, cols))}) VALUES ({', '.join('S.' + _q(c) for c in cols)});")
    parts.append("COMMIT TRANSACTION;")
    return "\n".join(parts)


def claim_script(offsets: str) -> str:
    """Bump the epoch of each partition of @claims and name its owner (one atomic MERGE), then read back the
    partitions this claim owns (a concurrent claim that came later shows up as another owner)."""
    return (
        f"MERGE `{offsets}` T USING (SELECT * FROM UNNEST(@claims)) S "
        f"ON T.topic = S.topic AND T.`partition` = S.`partition`\n"
        f"WHEN MATCHED THEN UPDATE SET epoch = IFNULL(T.epoch, 0) + 1, owner = S.owner, "
        f"updated_at_ms = S.updated_at_ms\n"
        f"WHEN NOT MATCHED THEN INSERT (topic, `partition`, next_offset, updated_at_ms, epoch, owner) "
        f"VALUES (S.topic, S.`partition`, 0, S.updated_at_ms, 1, S.owner);\n"
        f"SELECT topic, `partition`, next_offset, epoch, owner FROM `{offsets}` "
        f"WHERE STRUCT(topic, `partition`) IN (SELECT AS STRUCT topic, `partition` FROM UNNEST(@claims));")


def _struct_array(name: str, columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> Any:
    from google.cloud import bigquery

    fields = _fields(columns)
    values = [bigquery.StructQueryParameter(None, *[bigquery.ScalarQueryParameter(f, t, row[f]) for f, t in fields])
              for row in rows]
    return bigquery.ArrayQueryParameter(name, "STRUCT", values)


def _transient(exc: BaseException) -> bool:
    names = {t.__name__ for t in type(exc).__mro__}
    if names & set(_RETRIABLE):
        return True
    text = str(exc).lower()
    return "concurrent update" in text or "could not serialize access" in text


class BigQueryWarehouse:
    """Warehouse tables `scores`, `labels`, `sink_offsets` in one BigQuery dataset."""

    def __init__(self, config: BigQueryConfig, *, client: Any = None) -> None:
        self.config = config
        self.description = f"bigquery:{config.project}.{config.dataset}"
        self._client = client

    def _table(self, name: str) -> str:
        return f"{self.config.project}.{self.config.dataset}.{name}"

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import bigquery

            kwargs: dict[str, Any] = {"project": self.config.project, "location": self.config.location}
            if self.config.api_endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = {"api_endpoint": self.config.api_endpoint}
                kwargs["credentials"] = AnonymousCredentials()
            try:
                self._client = bigquery.Client(**kwargs)
            except Exception as exc:  # noqa: BLE001 (google.auth: no default credentials, bad project)
                raise FraudError(f"BigQuery client for project {self.config.project}: {exc}") from None
        return self._client

    def open(self) -> None:
        from google.cloud import bigquery

        c = self.client
        dataset = bigquery.Dataset(f"{self.config.project}.{self.config.dataset}")
        if self.config.location:
            dataset.location = self.config.location
        try:
            c.create_dataset(dataset, exists_ok=True)
            for name, columns, cluster in (("scores", SCORE_COLUMNS, ["transaction_id"]),
                                           ("labels", LABEL_COLUMNS, ["transaction_id"]),
                                           ("sink_offsets", OFFSET_COLUMNS, None)):
                table = bigquery.Table(self._table(name),
                                       schema=[bigquery.SchemaField(f, t) for f, t in _fields(columns)])
                if cluster:
                    table.clustering_fields = cluster
                have = c.create_table(table, exists_ok=True)
                missing = [f for f in table.schema if f.name not in {g.name for g in have.schema or ()}]
                if missing and have.schema:  # made before these columns existed (sink_offsets' epoch, owner)
                    have.schema = [*have.schema, *missing]
                    c.update_table(have, ["schema"])
        except Exception as exc:  # noqa: BLE001
            raise FraudError(f"cannot create the warehouse tables in {self.description}: {exc}") from None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        from google.cloud import bigquery
        from google.cloud.bigquery.retry import DEFAULT_RETRY

        config = bigquery.QueryJobConfig(query_parameters=list(params))
        retry = DEFAULT_RETRY.with_timeout(self.config.retry_deadline_s)
        try:
            # job_retry=None: the library would re-run a failed job for up to 10 minutes on its own; a failed
            # job surfaces here instead, as a RetriableError when transient, and the sink retries the batch.
            job = self.client.query(sql, job_config=config, location=self.config.location, retry=retry,
                                    job_retry=None)
            return job.result(retry=retry)
        except Exception as exc:  # noqa: BLE001 (classified: transient -> retry the batch, else fail)
            if _transient(exc):
                raise RetriableError(f"BigQuery: {type(exc).__name__}: {exc}") from exc
            raise

    def stored_offsets(self) -> dict[TopicPartition, int]:
        rows = self._run(f"SELECT topic, `partition`, next_offset FROM `{self._table('sink_offsets')}`")
        return {(r["topic"], int(r["partition"])): int(r["next_offset"]) for r in rows}

    def _epochs(self) -> dict[TopicPartition, int]:
        rows = self._run(f"SELECT topic, `partition`, IFNULL(epoch, 0) AS epoch FROM `{self._table('sink_offsets')}`")
        return {(r["topic"], int(r["partition"])): int(r["epoch"]) for r in rows}

    def claim(self, partitions: Sequence[TopicPartition], owner: str) -> dict[TopicPartition, Claim]:
        if not partitions:
            return {}
        token = f"{owner}#{uuid.uuid4().hex[:12]}"  # tells this claim's rows from a concurrent one's
        ts = now_ms()
        rows = self._run(claim_script(self._table("sink_offsets")), [_struct_array(
            "claims", (("topic", "VARCHAR"), ("partition", "INTEGER"), ("owner", "VARCHAR"), ("updated_at_ms", "BIGINT")),
            [{"topic": t, "partition": p, "owner": token, "updated_at_ms": ts} for t, p in sorted(partitions)])])
        out = {(r["topic"], int(r["partition"])): Claim(int(r["next_offset"]), int(r["epoch"]))
               for r in rows if r["owner"] == token}
        missing = sorted(set(partitions) - set(out))
        if missing:  # claimed again by another sink between our MERGE and SELECT: the group is still moving
            raise RetriableError(f"BigQuery: partitions {missing} claimed concurrently")
        return out

    def write(self, batch: WarehouseBatch, epochs: Mapping[TopicPartition, int] | None = None) -> WriteResult:
        if not batch.offsets:
            return WriteResult(0, 0, 0, 0)
        ts = now_ms()
        # The stored offsets are not read first (a round trip per batch): the MERGEs are idempotent on their
        # own, and offsets only move forward.
        scores, labels = select_new(batch, {})
        params = [_struct_array("offsets", OFFSET_COLUMNS,
                                [{"topic": t, "partition": p, "next_offset": o, "updated_at_ms": ts,
                                  "epoch": (epochs or {}).get((t, p), 0), "owner": None}
                                 for (t, p), o in sorted(batch.offsets.items())])]
        if scores:
            params.append(_struct_array("scores", SCORE_COLUMNS, [score_row(r, ts) for r in scores]))
        if labels:
            params.append(_struct_array("labels", LABEL_COLUMNS, [label_row(r, ts) for r in labels]))
        if epochs is not None:
            params.append(_struct_array("epochs", (("topic", "VARCHAR"), ("partition", "INTEGER"), ("epoch", "BIGINT")),
                                        [{"topic": t, "partition": p, "epoch": epochs.get((t, p), -1)}
                                         for t, p in sorted(batch.offsets)]))
        sql = merge_script(self._table("scores"), self._table("labels"), self._table("sink_offsets"),
                           with_scores=bool(scores), with_labels=bool(labels), fenced=epochs is not None)
        try:
            self._run(sql, params)
        except Exception as exc:
            if epochs is not None and FENCED_MESSAGE in str(exc):
                raise Fenced(fenced_partitions(self._epochs(), epochs, batch.offsets) or sorted(batch.offsets)) from None
            raise
        log_event(log, logging.DEBUG, "bigquery_batch", scores=len(scores), labels=len(labels))
        # BigQuery does not say per statement how many rows a MERGE inserted without extra calls: report what
        # was offered (after de-duplication within the batch).
        return WriteResult(len(scores), len(batch.scores) - len(scores), len(labels), len(batch.labels) - len(labels))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
