"""The BigQuery warehouse through the real google-cloud-bigquery client, against a local HTTP server that
speaks the REST endpoints the client calls (datasets.insert, tables.insert, jobs.insert, jobs.get,
jobs.getQueryResults). No Google account is involved, so this proves what the client *sends* (the requests,
the SQL, the typed query parameters, retries of transient failures) and the sink's logic around it; the
server's MERGE semantics are this file's emulation, not BigQuery's (see monitoring/README.md)."""

from __future__ import annotations

import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from fraud.contract import LabelEvent, ScoreEvent
from fraud.errors import FraudError
from fraud.stream.records import Record, RetriableError
from monitoring.testing import synthetic_scores
from warehouse.bigquery import FENCED_MESSAGE, BigQueryWarehouse, claim_script, merge_script
from warehouse.config import BigQueryConfig
from warehouse.store import Claim, Fenced, LabelRecord, Located, ScoreRecord, WarehouseBatch

PROJECT, DATASET = "test-project", "fraud"


def _value(ptype: dict, pvalue: dict) -> Any:
    """A query parameter value from its REST form (strings on the wire) back to Python."""
    kind = ptype["type"]
    if kind == "ARRAY":
        return [_value(ptype["arrayType"], v) for v in pvalue.get("arrayValues", [])]
    if kind == "STRUCT":
        return {f["name"]: _value(f["type"], pvalue["structValues"].get(f["name"], {}))
                for f in ptype["structTypes"]}
    raw = pvalue.get("value")
    if raw is None:
        return None
    return {"INT64": int, "FLOAT64": float, "BOOL": lambda s: s == "true", "STRING": str}[kind](raw)


class FakeBigQuery:
    """Just enough of the BigQuery REST API for the sink, recording every request.

    Script jobs of the sink's form (BEGIN TRANSACTION; MERGE ...; COMMIT TRANSACTION;) are applied to
    in-memory tables with the semantics the SQL states; `SELECT ... FROM ...sink_offsets` is answered from
    them. `fail_next` makes the next N jobs.insert calls answer 503.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.datasets: set[str] = set()
        self.tables: dict[str, list[dict]] = {}  # name -> schema fields
        self.scores: dict[str, dict] = {}
        self.labels: dict[str, dict] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.epochs: dict[tuple[str, int], tuple[int, str]] = {}  # (epoch, owner) per claimed partition
        self.jobs: dict[str, dict] = {}
        self.results: dict[str, dict] = {}
        self.fail_next = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return orjson.loads(self.rfile.read(n)) if n else {}

            def do_GET(self) -> None:  # noqa: N802
                outer._dispatch(self, "GET", {})

            def do_POST(self) -> None:  # noqa: N802
                outer._dispatch(self, "POST", self._body())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeBigQuery:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, req: BaseHTTPRequestHandler, code: int, body: dict) -> None:
        data = orjson.dumps(body)
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str, body: dict) -> None:
        path = req.path.split("?", 1)[0]
        with self.lock:
            self.requests.append((method, path, body))
            base = f"/bigquery/v2/projects/{PROJECT}"
            if method == "POST" and path == f"{base}/datasets":
                self.datasets.add(body["datasetReference"]["datasetId"])
                return self._reply(req, 200, body)
            if method == "POST" and re.fullmatch(rf"{base}/datasets/[^/]+/tables", path):
                self.tables[body["tableReference"]["tableId"]] = body["schema"]["fields"]
                return self._reply(req, 200, body)
            if method == "POST" and path == f"{base}/jobs":
                if self.fail_next:
                    self.fail_next -= 1
                    return self._reply(req, 503, {"error": {"code": 503, "message": "backend error",
                                                            "status": "UNAVAILABLE"}})
                result = self._run_job(body)
                return self._reply(req, *result) if isinstance(result, tuple) else self._reply(req, 200, result)
            m = re.fullmatch(rf"{base}/jobs/([^/]+)", path)
            if method == "GET" and m and m.group(1) in self.jobs:
                return self._reply(req, 200, self.jobs[m.group(1)])
            m = re.fullmatch(rf"{base}/queries/([^/]+)", path)
            if method == "GET" and m and m.group(1) in self.results:
                return self._reply(req, 200, self.results[m.group(1)])
            return self._reply(req, 404, {"error": {"code": 404, "message": f"no {method} {path}"}})

    def _run_job(self, body: dict) -> dict:
        job_id = body.get("jobReference", {}).get("jobId") or uuid.uuid4().hex
        query = body["configuration"]["query"]
        sql = query["query"]
        params = {p["name"]: _value(p["parameterType"], p["parameterValue"]) for p in query.get("queryParameters", [])}
        schema: list[dict] = []
        rows: list[dict] = []
        if sql.startswith("BEGIN TRANSACTION;") and "epochs" in params:
            stale = [e for e in params["epochs"]
                     if self.epochs.get((e["topic"], e["partition"]), (0, None))[0] != e["epoch"]]
            if stale:  # what the script's IF ... RAISE does (and the transaction rolls back)
                return 400, {"error": {"code": 400, "message": f"Query error: {FENCED_MESSAGE} at [2:3]",
                                       "status": "INVALID_ARGUMENT"}}
        if sql.startswith("MERGE") and "@claims" in sql:
            for c in params["claims"]:
                tp = (c["topic"], c["partition"])
                self.epochs[tp] = (self.epochs.get(tp, (0, None))[0] + 1, c["owner"])
                self.offsets.setdefault(tp, 0)
            schema = [{"name": "topic", "type": "STRING"}, {"name": "partition", "type": "INTEGER"},
                      {"name": "next_offset", "type": "INTEGER"}, {"name": "epoch", "type": "INTEGER"},
                      {"name": "owner", "type": "STRING"}]
            claimed = sorted((c["topic"], c["partition"]) for c in params["claims"])
            rows = [{"f": [{"v": t}, {"v": str(p)}, {"v": str(self.offsets[(t, p)])},
                           {"v": str(self.epochs[(t, p)][0])}, {"v": self.epochs[(t, p)][1]}]} for t, p in claimed]
        elif sql.startswith("BEGIN TRANSACTION;"):
            for row in params.get("scores", []):
                self.scores.setdefault(row["transaction_id"], row)
            for row in params.get("labels", []):
                have = self.labels.get(row["transaction_id"])
                if have is None or row["labelled_at_ms"] > have["labelled_at_ms"] or (
                        row["labelled_at_ms"] == have["labelled_at_ms"] and row["label"] != have["label"]):
                    self.labels[row["transaction_id"]] = row
            for row in params["offsets"]:
                tp = (row["topic"], row["partition"])
                self.offsets[tp] = max(self.offsets.get(tp, 0), row["next_offset"])
        elif "sink_offsets" in sql and sql.startswith("SELECT") and "epoch" in sql:
            schema = [{"name": "topic", "type": "STRING"}, {"name": "partition", "type": "INTEGER"},
                      {"name": "epoch", "type": "INTEGER"}]
            rows = [{"f": [{"v": t}, {"v": str(p)}, {"v": str(e)}]} for (t, p), (e, _) in sorted(self.epochs.items())]
        elif "sink_offsets" in sql and sql.startswith("SELECT"):
            schema = [{"name": "topic", "type": "STRING"}, {"name": "partition", "type": "INTEGER"},
                      {"name": "next_offset", "type": "INTEGER"}]
            rows = [{"f": [{"v": t}, {"v": str(p)}, {"v": str(o)}]} for (t, p), o in sorted(self.offsets.items())]
        else:
            raise AssertionError(f"unexpected query {sql[:200]}")
        ref = {"projectId": PROJECT, "jobId": job_id, "location": "US"}
        job = {"kind": "bigquery#job", "id": f"{PROJECT}:US.{job_id}", "jobReference": ref,
               "configuration": body["configuration"], "status": {"state": "DONE"},
               "statistics": {"creationTime": "1", "startTime": "1", "endTime": "2",
                              "query": {"statementType": "SCRIPT" if not schema else "SELECT"}}}
        self.jobs[job_id] = job
        self.results[job_id] = {"kind": "bigquery#getQueryResultsResponse", "jobReference": ref, "jobComplete": True,
                                "totalRows": str(len(rows)), "rows": rows, "schema": {"fields": schema}}
        return job

    def jobs_sent(self) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and p.endswith("/jobs")]


@pytest.fixture
def fake_bq():
    with FakeBigQuery() as server:
        yield server


def warehouse(server: FakeBigQuery) -> BigQueryWarehouse:
    wh = BigQueryWarehouse(BigQueryConfig(PROJECT, DATASET, api_endpoint=server.endpoint, retry_deadline_s=1.0))
    wh.open()
    return wh


def batch_of(n: int, *, start: int = 0, labels: bool = True) -> WarehouseBatch:
    data = synthetic_scores(n + start, seed=13)[start:]
    b = WarehouseBatch(scores=[ScoreRecord(d.score, Located("fraud.scores", 0, start + i)) for i, d in enumerate(data)],
                       offsets={("fraud.scores", 0): start + n})
    if labels:
        b.labels = [LabelRecord(d.label, Located("fraud.labels", 1, start + i)) for i, d in enumerate(data)]
        b.offsets[("fraud.labels", 1)] = start + n
    return b


def test_open_creates_the_dataset_and_typed_tables(fake_bq: FakeBigQuery):
    wh = warehouse(fake_bq)
    assert fake_bq.datasets == {DATASET}
    assert set(fake_bq.tables) == {"scores", "labels", "sink_offsets"}
    types = {f["name"]: f["type"] for f in fake_bq.tables["scores"]}
    assert types["transaction_id"] == "STRING" and types["score"] == "FLOAT64" and types["decision"] == "BOOL"
    assert types["kafka_offset"] == "INT64"
    table_posts = [b for m, p, b in fake_bq.requests if p.endswith("/tables")]
    assert next(b for b in table_posts if b["tableReference"]["tableId"] == "scores")["clustering"] == {
        "fields": ["transaction_id"]}
    assert wh.stored_offsets() == {}
    wh.close()


def test_a_batch_is_one_transaction_with_typed_parameters(fake_bq: FakeBigQuery):
    wh = warehouse(fake_bq)
    batch = batch_of(20)
    result = wh.write(batch)
    assert result.scores_inserted == 20 and result.labels_written == 20
    (job,) = fake_bq.jobs_sent()
    query = job["configuration"]["query"]
    sql = query["query"]
    assert sql.startswith("BEGIN TRANSACTION;") and sql.rstrip().endswith("COMMIT TRANSACTION;")
    assert sql.count("MERGE `test-project.fraud.") == 3
    assert "ON T.transaction_id = S.transaction_id" in sql and "S.next_offset > T.next_offset" in sql
    assert query["useLegacySql"] is False
    params = {p["name"]: p for p in query["queryParameters"]}
    assert set(params) == {"scores", "labels", "offsets"}
    struct = {f["name"]: f["type"]["type"] for f in params["scores"]["parameterType"]["arrayType"]["structTypes"]}
    assert struct["score"] == "FLOAT64" and struct["model_version"] == "INT64" and struct["explanation"] == "STRING"
    first = params["scores"]["parameterValue"]["arrayValues"][0]["structValues"]
    sent = batch.scores[0].event
    assert first["transaction_id"]["value"] == sent.transaction_id
    assert float(first["score"]["value"]) == sent.score
    assert first["decision"]["value"] == ("true" if sent.decision else "false")
    assert wh.stored_offsets() == {("fraud.scores", 0): 20, ("fraud.labels", 1): 20}
    assert set(fake_bq.scores) == {r.event.transaction_id for r in batch.scores}


def test_replayed_batches_and_duplicates_change_nothing(fake_bq: FakeBigQuery):
    wh = warehouse(fake_bq)
    first = batch_of(30)
    wh.write(first)
    wh.write(first)  # the sink was killed before it knew the job had committed
    dup = batch_of(5, start=30, labels=False)
    dup.scores += dup.scores[:2]  # an at-least-once bridge sent two scores twice
    result = wh.write(dup)
    assert result.scores_inserted == 5 and result.scores_ignored == 2
    assert len(fake_bq.scores) == 35
    assert wh.stored_offsets()[("fraud.scores", 0)] == 35
    # A batch without scores or labels (only dead letters) still moves the offsets, and nothing else.
    only_offsets = WarehouseBatch(offsets={("fraud.scores", 0): 36})
    wh.write(only_offsets)
    assert "UNNEST(@scores)" not in fake_bq.jobs_sent()[-1]["configuration"]["query"]["query"]
    assert wh.stored_offsets()[("fraud.scores", 0)] == 36


def test_transient_failures_become_retriable_errors(fake_bq: FakeBigQuery):
    wh = warehouse(fake_bq)
    fake_bq.fail_next = 1000  # more than the client library's own retries
    with pytest.raises(RetriableError, match="BigQuery"):
        wh.write(batch_of(3))
    fake_bq.fail_next = 0
    wh.write(batch_of(3))
    assert len(fake_bq.scores) == 3


def test_sink_job_writes_through_bigquery_and_resumes_from_its_offsets(fake_bq: FakeBigQuery):
    """SinkJob (no Kafka: a fake reader) -> BigQueryWarehouse -> the fake server, twice: the second run
    starts from the offsets the first stored, and a transient 503 is retried with the same batch."""
    from fraud.kafka_config import KafkaClientConfig
    from warehouse.config import SinkConfig
    from warehouse.sink import SinkJob, make_warehouse

    data = synthetic_scores(300, seed=17)
    records = [Record("fraud.scores", 0, i, d.score.transaction_id.encode(), d.score.to_json(), 0)
               for i, d in enumerate(data)]
    starts: list[dict] = []

    class Reader:
        def __init__(self, kafka, topics, *, group_id, claim, on_revoke, group_instance_id, session_timeout_ms,
                     max_poll_interval_ms, fetch_stall_s):
            self.claim = claim
            self.todo = None

        def poll(self, max_records, timeout_s):
            if self.todo is None:  # the group assigns the partition: the sink claims it
                start = dict(self.claim([("fraud.scores", 0)]))
                starts.append(start)
                self.todo = [r for r in records if r.offset >= start[("fraud.scores", 0)]]
            out, self.todo = self.todo[:max_records], self.todo[max_records:]
            return out

        def lag(self):
            return {}

        def commit_advisory(self, offsets):
            pass

        def close(self):
            pass

    class Producer:
        def close(self):
            pass

    config = SinkConfig(kafka=KafkaClientConfig(), warehouse="bigquery",
                        bigquery=BigQueryConfig(PROJECT, DATASET, api_endpoint=fake_bq.endpoint, retry_deadline_s=1.0),
                        batch_max_size=100, batch_max_wait_ms=0, stop_when_idle_s=0.2)
    fake_bq.fail_next = 1
    job = SinkJob(config, make_warehouse(config), reader_factory=Reader, producer=Producer(), sleep=lambda s: None)
    stats = job.run()
    assert stats.scores_inserted == 300 and len(fake_bq.scores) == 300
    records += [Record("fraud.scores", 0, 300 + i, None, d.score.to_json(), 0)
                for i, d in enumerate(synthetic_scores(350, seed=18)[300:])]
    SinkJob(config, make_warehouse(config), reader_factory=Reader, producer=Producer(), sleep=lambda s: None).run()
    assert starts == [{("fraud.scores", 0): 0}, {("fraud.scores", 0): 300}]
    assert len(fake_bq.scores) == 350
    assert fake_bq.epochs[("fraud.scores", 0)][0] == 2


def test_the_script_only_merges_what_the_batch_has():
    sql = merge_script("p.d.scores", "p.d.labels", "p.d.sink_offsets", with_scores=False, with_labels=True)
    assert "@scores" not in sql and "@labels" in sql and "@offsets" in sql
    assert "T.`partition` = S.`partition`" in sql


def test_no_credentials_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path):
    # Without an endpoint the client looks for Application Default Credentials; here there are none.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    wh = BigQueryWarehouse(BigQueryConfig(PROJECT, DATASET))
    with pytest.raises(FraudError) as err:
        wh.open()
    assert "BigQuery client for project test-project" in str(err.value)
    assert "\n" not in str(err.value)


def test_events_round_trip_through_the_parameters(fake_bq: FakeBigQuery):
    wh = warehouse(fake_bq)
    event = ScoreEvent(transaction_id="tx-x", event_time_ms=5, card_id="c", score=0.25, decision=False,
                       threshold=0.5, model_name="m", model_version=7, source_timestamp_ms=10, scored_at_ms=12)
    label = LabelEvent("tx-x", 1, 5, 99)
    wh.write(WarehouseBatch(scores=[ScoreRecord(event, Located("s", 0, 0))],
                            labels=[LabelRecord(label, Located("l", 0, 0))], offsets={("s", 0): 1, ("l", 0): 1}))
    row = fake_bq.scores["tx-x"]
    assert row["score"] == 0.25 and row["decision"] is False and row["model_version"] == 7
    assert row["latency_ms"] == 2 and row["reconstruction_error"] is None and row["explanation"] is None
    assert fake_bq.labels["tx-x"]["label"] == 1


def test_claims_fence_a_sink_that_lost_its_partition(fake_bq: FakeBigQuery):
    """Two sinks on one dataset: the second claim of a partition bumps its epoch; the first sink's write
    with the old epoch is refused whole (Fenced), the new owner's goes through."""
    a, b = warehouse(fake_bq), warehouse(fake_bq)
    tp = ("fraud.scores", 0)
    assert a.claim([tp, ("fraud.labels", 1)], "sink-a") == {tp: Claim(0, 1), ("fraud.labels", 1): Claim(0, 1)}
    batch = batch_of(10)
    a.write(batch, {tp: 1, ("fraud.labels", 1): 1})
    assert b.claim([tp], "sink-b") == {tp: Claim(10, 2)}
    later = batch_of(5, start=10, labels=False)
    with pytest.raises(Fenced) as err:
        a.write(later, {tp: 1})
    assert err.value.partitions == [tp]
    assert len(fake_bq.scores) == 10 and fake_bq.offsets[tp] == 10
    b.write(later, {tp: 2})
    assert len(fake_bq.scores) == 15 and fake_bq.offsets[tp] == 15
    sql = fake_bq.jobs_sent()[-1]["configuration"]["query"]["query"]
    assert "UNNEST(@epochs)" in sql and f"RAISE USING MESSAGE = '{FENCED_MESSAGE}'" in sql
    assert "@claims" in claim_script("p.d.sink_offsets") and "epoch = IFNULL(T.epoch, 0) + 1" in claim_script("x")
