"""`python -m chaos` (`make test-chaos`): consecutive end-to-end chaos runs; exit 0 only when all are clean.

    python -m chaos                          # 5 runs of 100,000 events on a 3-broker embedded cluster
    python -m chaos --runs 1 --events 20000 --brokers 1     # a quick one on a single broker
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chaos import corpus
from chaos.cluster import ChaosCluster, EmbeddedClusterAdapter, SingleBroker
from chaos.run import Result, Settings, run_once
from fraud.errors import FraudError
from fraud.logs import configure_logging
from fraud.paths import load_paths

FULL_DATASET = Path("/work/shared/data/creditcard.csv.gz")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--runs", type=int, default=5, help="consecutive runs (default 5)")
    p.add_argument("--events", type=int, default=d.events, help=f"valid events per run (default {d.events})")
    p.add_argument("--rate", type=float, default=d.rate, help=f"events sent per second (default {d.rate:g})")
    p.add_argument("--brokers", type=int, default=3, choices=[1, 3], help="embedded brokers (default 3)")
    p.add_argument("--delivery", default=d.delivery, choices=["exactly_once", "at_least_once"])
    p.add_argument("--per-kind", type=int, default=d.per_kind, help="malformed records of each kind")
    p.add_argument("--kills", type=int, default=d.kills, help="kill -9 per stream service per run")
    p.add_argument("--hard-bounces", type=int, default=d.hard_bounces)
    p.add_argument("--clean-bounces", type=int, default=d.clean_bounces)
    p.add_argument("--server-outage-s", type=float, default=d.server_outage_s)
    p.add_argument("--settle-s", type=float, default=d.settle_s, help="quiet time that ends the read-back")
    p.add_argument("--dataset", type=Path, default=None,
                   help="dataset CSV(.gz) (default: the full dataset if present, else the shipped sample)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="model base path to serve (default: the pipeline's model trained on the sample, cached)")
    p.add_argument("--bootstrap", default=None, help="use a running cluster instead of starting one (no bounces)")
    p.add_argument("--workdir", type=Path, default=None, help="where runs keep logs and warehouses")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@contextlib.contextmanager
def cluster_for(brokers: int, state_dir: Path) -> Iterator[ChaosCluster]:
    from fraud.embedded import testing

    if brokers == 1:
        with testing.temporary_broker(state_dir) as kafka:
            single = SingleBroker(kafka)
            try:
                yield single
            finally:
                single.close()
        return
    with testing.temporary_cluster(state_dir, brokers) as cluster:
        yield EmbeddedClusterAdapter(cluster)


def table(results: list[Result]) -> str:
    head = ("run", "events in", "out (scored)", "in warehouse", "dead-lettered", "lost", "duplicated", "faults",
            "leader moves", "crash restarts", "seconds", "verdict")
    rows = [(str(r.run), f"{r.events_in:,}", f"{r.scored:,}", f"{r.warehouse:,}", f"{r.dead_lettered:,}",
             str(r.lost), str(r.duplicated), str(len(r.faults)), str(r.leader_moves), str(len(r.unexpected_exits)),
             f"{r.seconds:.0f}", "clean" if r.clean else "NOT CLEAN") for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = [" | ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)) for row in (head, *rows)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(events=args.events, rate=args.rate, per_kind=args.per_kind, kills=args.kills,
                        hard_bounces=args.hard_bounces, clean_bounces=args.clean_bounces,
                        server_outage_s=args.server_outage_s, settle_s=args.settle_s, delivery=args.delivery,
                        seed=args.seed)
    dataset = args.dataset or (FULL_DATASET if FULL_DATASET.is_file() else load_paths().home / "missing")
    if not dataset.is_file():
        from fraud.paths import SAMPLE_CSV

        dataset = SAMPLE_CSV
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    if args.model_dir is not None:
        model_base = args.model_dir
    else:
        say("model: the pipeline's model trained on the shipped sample (cached after the first time)")
        from bench.shipped_model import shipped_model_base

        model_base = shipped_model_base()
    say(f"corpus: {settings.events:,} events from {dataset.name} at {settings.rate:g}/s, "
        f"{settings.per_kind} malformed records of each kind")
    events = corpus.build(dataset, settings.events, rate=settings.rate, per_kind=settings.per_kind,
                          label_delay_s=settings.label_delay_s, seed=settings.seed)
    workroot = work_directory(args.workdir, load_paths().home)
    log_file = open(workroot / "chaos.log", "a")  # noqa: SIM115 (open for the whole run)
    configure_logging("INFO", stream=log_file)  # client libraries' complaints during bounces go there
    say(f"work directory: {workroot} (the harness's log: chaos.log; each service's: run-N/logs/)")
    results: list[Result] = []
    with cluster_for(args.brokers, workroot / "kafka") as cluster:
        say(f"cluster: {cluster.description} at {cluster.bootstrap}; delivery {settings.delivery}")
        for run in range(1, args.runs + 1):
            say(f"run {run} of {args.runs}")
            result = run_once(cluster, settings, workroot / f"run-{run}", model_base, events, run, say)
            results.append(result)
            say(result.line())
            for text in result.problems + result.unexpected_exits:
                say(f"  ! {text}")
    total = time.monotonic() - started
    print()
    print(table(results))
    clean = sum(r.clean for r in results)
    print(f"\n{clean} of {len(results)} runs clean; {total / 60:.1f} minutes in all (logs: {workroot})")
    return 0 if clean == len(results) else 1


def work_directory(given: Path | None, home: Path) -> Path:
    """`--workdir`, else a new `chaos-*` directory under FRAUD_HOME; either is created if it is missing (on a
    fresh checkout FRAUD_HOME, `var/`, does not exist yet)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    home.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="chaos-", dir=home))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FraudError as exc:
        print(f"python -m chaos: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
