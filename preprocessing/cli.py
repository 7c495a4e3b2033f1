"""`fraudctl ingest` and `fraudctl preprocess run|check-rules|users|privacy-check`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fraud.embedded.broker import running_bootstrap
from fraud.embedded.connect import ConnectConfig, ConnectStandalone
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.logs import configure_logging
from fraud.paths import SAMPLE_CSV, load_paths
from fraud.replay import DEFAULT_CARDS, DEFAULT_SEED, CardPool
from fraud.stream.admin import KafkaAdmin, ensure_topics
from fraud.topics import ALERTS, DLQ_BRIDGE, DLQ_PREPROCESS, INGEST_CSV, LABELS, SCORES, TRANSACTIONS, USERS, TopicSpec

#: Topics downstream of preprocessing: none may hold a raw card or customer id.
DOWNSTREAM_TOPICS: tuple[str, ...] = (TRANSACTIONS.name, SCORES.name, LABELS.name, DLQ_PREPROCESS.name,
                                      DLQ_BRIDGE.name, ALERTS.name)
EXIT_FOUND = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    ingest = subparsers.add_parser(
        "ingest", help="read a CSV file into the ingest topic through Kafka Connect (FileStreamSource)",
        description="Read a dataset CSV (or .csv.gz) into the ingest topic with Kafka Connect's FileStreamSource, "
                    "as the seed did, and report progress. Uses the embedded Connect worker (started for the "
                    "run if it is not running). Connect remembers per file how far it read: ingesting the same "
                    "file again sends only lines appended since, unless --again.")
    ingest.add_argument("--file", type=Path, default=SAMPLE_CSV, help="CSV or CSV.gz (default: the shipped sample)")
    ingest.add_argument("--topic", default=INGEST_CSV.name, help="default: %(default)s")
    ingest.add_argument("--again", action="store_true", help="forget how far Connect read the file; send it all")
    ingest.add_argument("--follow", action="store_true",
                        help="leave the connector running: lines appended to the file later are ingested too")
    ingest.add_argument("--connector", metavar="NAME", help="connector name (default: one per file path)")
    ingest.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="give up when the lines are not all in after this long (default 600)")
    ingest.add_argument("--connect-state-dir", type=Path, help="the Connect worker's state dir (default: FRAUD_HOME/connect)")
    ingest.add_argument("--rest-port", type=int, default=8083, help="REST port if the worker must be started")
    ingest.add_argument("--keep-connect", action="store_true", help="leave a worker this command started running")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    KafkaClientConfig.add_arguments(ingest)
    ingest.set_defaults(func=_ingest)

    pre = subparsers.add_parser("preprocess", help="the rule-driven preprocessing stream job and its tools",
                                description="Raw records -> clean, anonymized transaction events.")
    sub = pre.add_subparsers(dest="preprocess_command", metavar="ACTION", required=True)

    from preprocessing.job import add_arguments

    run = sub.add_parser("run", help="run the preprocessing job until SIGTERM/SIGINT",
                         description="Consume CSV lines (Kafka Connect) and raw events, apply the rules file, "
                                     "produce clean anonymized events and dead letters. Every flag is also an "
                                     "environment variable FRAUD_PREPROCESS_<NAME>; the anonymization key comes "
                                     "from FRAUD_ANONYMIZE_KEY or a key file, never from a flag.")
    add_arguments(run)
    run.set_defaults(func=_run)

    check = sub.add_parser("check-rules", help="check a rules file and say what it does",
                           description="Load a rules file as the job would at start; a mistake is reported as "
                                       "FILE:LINE: what is wrong.")
    check.add_argument("--rules", type=Path, default=None, help="default: the shipped preprocessing/rules.yaml")
    check.set_defaults(func=_check_rules)

    users = sub.add_parser("users", help="fill the users reference table (compacted topic)",
                           description="Write the users table the job enriches from: synthetic users for the "
                                       "customers of replay's card pool, or a JSON-lines file (one object per line "
                                       "with a customer_id).")
    src = users.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="users for every customer of the card pool")
    src.add_argument("--file", type=Path, help="JSON lines: {\"customer_id\": ..., \"name\": ..., ...}")
    users.add_argument("--cards", type=int, default=DEFAULT_CARDS, help="card pool size (as replay)")
    users.add_argument("--seed", type=int, default=DEFAULT_SEED, help="card pool seed (as replay)")
    users.add_argument("--topic", default=USERS.name, help="default: %(default)s")
    KafkaClientConfig.add_arguments(users)
    users.set_defaults(func=_users)

    priv = sub.add_parser("privacy-check", help="search downstream topics, exports, warehouse and logs for raw ids",
                          description="Look for raw card and customer ids (those of replay's synthetic pool, or "
                                      "listed in --ids-file) in the downstream topics, and in the files, "
                                      "directories and DuckDB warehouses given. Exit 4 when any is found; "
                                      "findings show masked ids only.")
    priv.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                      help=f"topic to scan (repeatable; default: {', '.join(DOWNSTREAM_TOPICS)})")
    priv.add_argument("--skip-topics", action="store_true", help="scan only the paths and warehouses given")
    priv.add_argument("--path", action="append", type=Path, default=[], metavar="PATH",
                      help="file or directory to scan, e.g. exports or logs (repeatable)")
    priv.add_argument("--warehouse", action="append", type=Path, default=[], metavar="DUCKDB",
                      help="DuckDB warehouse file to scan (repeatable)")
    priv.add_argument("--ids-file", type=Path, help="raw ids to look for, one per line (default: the card pool)")
    priv.add_argument("--cards", type=int, default=DEFAULT_CARDS, help="card pool size (as replay)")
    priv.add_argument("--seed", type=int, default=DEFAULT_SEED, help="card pool seed (as replay)")
    KafkaClientConfig.add_arguments(priv)
    priv.set_defaults(func=_privacy)


def _kafka(args: argparse.Namespace, client_id: str):
    """Flags, else FRAUD_KAFKA_*, else the running embedded broker, else the default bootstrap."""

    if not getattr(args, "bootstrap", None) and not os.environ.get("FRAUD_KAFKA_BOOTSTRAP"):
        running = running_bootstrap(load_paths().kafka_dir)
        if running:
            args.bootstrap = running
    return KafkaClientConfig.from_env_and_args(args, client_id=client_id)


def _ingest(args: argparse.Namespace) -> int:
    from preprocessing.ingest import ingest_file, progress_printer

    paths = load_paths()
    kafka = _kafka(args, "fraudctl-ingest")
    spec = INGEST_CSV if args.topic == INGEST_CSV.name else TopicSpec(args.topic, 1)
    ensure_topics(kafka, [spec])
    state_dir = (args.connect_state_dir or paths.connect_dir).expanduser().resolve()
    worker = ConnectStandalone(ConnectConfig(state_dir=state_dir, jars_dir=paths.jars_dir, bootstrap=kafka.bootstrap,
                                             rest_port=args.rest_port))
    started = False
    if not worker.is_running():
        print(f"starting Kafka Connect (state dir {state_dir}) ...", file=sys.stderr, flush=True)
        worker.start()
        started = True
    update, close = progress_printer(not args.no_progress)
    try:
        result = ingest_file(worker, kafka, args.file, args.topic, staging_dir=state_dir / "ingest",
                             name=args.connector, again=args.again, follow=args.follow, timeout_s=args.timeout,
                             on_progress=update)
    finally:
        close()
        if started and not args.follow and not args.keep_connect:
            worker.stop()
    print(result.summary())
    return 0


def _run(args: argparse.Namespace) -> int:
    from fraud.stream.processor import settle_heap
    from preprocessing.job import PreprocessConfig, PreprocessJob

    config = PreprocessConfig.from_args(args, os.environ)
    configure_logging(config.log_level)
    job = PreprocessJob(config)
    job.install_signal_handlers()
    settle_heap(config.stream.gc_threshold)
    stats = job.run()
    print(f"preprocess: consumed {stats.total}, clean {sum(stats.clean.values())}, "
          f"filtered {dict(stats.filtered)}, dead-lettered {dict(stats.dead)}", file=sys.stderr)
    return 0


def _check_rules(args: argparse.Namespace) -> int:
    from preprocessing.rules import DEFAULT_RULES, load_rules

    rules = load_rules(args.rules or DEFAULT_RULES)
    print(f"ok: {rules.summary()}")
    for f in rules.filters:
        print(f"  filter {f.name}: drop when {f.when.text}")
    for c in rules.checks:
        print(f"  check {c.name}: dead letter unless {c.require.text}")
    for i in rules.impute:
        print(f"  impute {i.field} = {i.value!r}" + (f" when {i.when.text}" if i.when else ""))
    for m in rules.masks:
        print(f"  mask {m.name}: {m.function}({m.field}{', ' + str(m.chars) if m.function != 'mask' else ''})")
    attrs = ", ".join(p.name for p in rules.project.attributes) or "none"
    print(f"  project: label {'kept' if rules.project.keep_label else 'dropped'}; attributes {attrs}")
    return 0


def _users(args: argparse.Namespace) -> int:
    import orjson

    from preprocessing.users import load_users, synthetic_users

    if args.synthetic:
        users = synthetic_users(CardPool(args.cards, args.seed))
    else:
        users = {}
        try:
            lines = args.file.read_bytes().splitlines()
        except OSError as exc:
            raise FraudError(f"cannot read {args.file}: {exc.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise FraudError(f"{args.file}:{n}: not a JSON object") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("customer_id"), str) or not obj["customer_id"]:
                raise FraudError(f"{args.file}:{n}: expected a JSON object with a customer_id string")
            users[obj.pop("customer_id")] = obj
    kafka = _kafka(args, "fraudctl-users")
    spec = USERS if args.topic == USERS.name else TopicSpec(args.topic, 1, {"cleanup.policy": "compact"})
    ensure_topics(kafka, [spec])
    n = load_users(kafka, args.topic, users)
    print(f"wrote {n} users to {args.topic}")
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from preprocessing.privacy import IdScanner, pool_ids, read_ids_file, scan_duckdb, scan_path, scan_topic

    ids = read_ids_file(args.ids_file) if args.ids_file else pool_ids(args.cards, args.seed)
    scanner = IdScanner(ids)
    findings = []
    topics: list[str] = []
    if not args.skip_topics:
        kafka = _kafka(args, "fraudctl-privacy")
        topics = args.topics
        if topics is None:
            with KafkaAdmin(kafka) as admin:
                existing = admin.topics()
            topics = [t for t in DOWNSTREAM_TOPICS if t in existing]
    for topic in topics:
        n, found = scan_topic(kafka, topic, scanner)
        print(f"topic {topic}: {n} records, {len(found)} raw ids")
        findings += found
    for path in args.path:
        n, found = scan_path(path, scanner)
        print(f"path {path}: {n} files, {len(found)} raw ids")
        findings += found
    for path in args.warehouse:
        n, found = scan_duckdb(path, scanner)
        print(f"warehouse {path}: {n} text columns, {len(found)} raw ids")
        findings += found
    for f in findings[:20]:
        print(f"  {f}")
    if findings:
        print(f"privacy check FAILED: {len(findings)} raw ids found ({len(ids)} looked for)")
        return EXIT_FOUND
    print(f"privacy check passed: none of {len(ids)} raw ids found")
    return 0
