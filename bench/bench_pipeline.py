"""Benchmark: the whole training pipeline on the full data set, and the models it trains.

    .venv/bin/python bench/bench_pipeline.py [--csv PATH] [--home DIR] [--keep]

1. Writes the full data set as one export span (TransactionEvents with labels, JSON lines, 4
   partitions) in a fresh FRAUD_HOME, exactly what `fraudctl export` writes.
2. Runs the pipeline with LocalDagRunner (splits 68% train / 12% validation / 20% eval by event
   time), and prints the wall time of every component from MLMD.
3. Scores the final 20% of rows in time order (56,962 rows from index 227,845; 75 frauds) with each
   trained model's serving signature (raw tf.Examples in) and prints AUPRC, ROC-AUC, precision at
   the top 100 scores and precision/recall at the threshold shipped in the model; and which model
   the pipeline served.

Baseline measured in the same run, for the ratio: the whole job done by hand in one process
(load the CSV into numpy, scikit-learn logistic regression with balanced class weights on the first
80%, score the last 20%), its wall time and its AUPRC.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fraud import signature
from fraud.console import Console, quiet_output
from fraud.dataset import load_arrays
from fraud.features import FEATURE_NAMES
from fraud.paths import Paths, load_paths
from pipeline.export import write_csv_span
from pipeline.progress import component_lines

EVAL_FRACTION = 0.2


def baseline(csv: Path) -> tuple[float, float]:
    """(seconds, AUPRC) of the by-hand job: numpy load, logistic regression, score the last 20%."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fraud.metrics import average_precision

    start = time.perf_counter()
    data = load_arrays(csv)
    k = int(len(data.labels) * (1 - EVAL_FRACTION))
    scaler = StandardScaler().fit(data.features[:k])
    model = LogisticRegression(class_weight="balanced", max_iter=1000).fit(scaler.transform(data.features[:k]),
                                                                           data.labels[:k])
    scores = model.decision_function(scaler.transform(data.features[k:]))
    return time.perf_counter() - start, average_precision(data.labels[k:], scores)


def component_times(paths: Paths) -> tuple[list[tuple[str, float, str]], float]:
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(paths.metadata_path)
    store = metadata_store.MetadataStore(config)
    node_of = {}
    for ctx in store.get_contexts_by_type("node"):
        for e in store.get_executions_by_context(ctx.id):
            node_of[e.id] = ctx.name.split(".")[-1]
    (run,) = store.get_contexts_by_type("pipeline_run")
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    rows = [(node_of[e.id], (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000.0,
             metadata_store_pb2.Execution.State.Name(e.last_known_state)) for e in executions]
    return rows, (max(e.last_update_time_since_epoch for e in executions) - run.create_time_since_epoch) / 1000.0


def eval_examples(csv: Path) -> tuple[list[bytes], np.ndarray, int]:
    """Serialized raw tf.Examples (features only, as the bridge sends them) of the last 20% of rows."""
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    data = load_arrays(csv)
    k = int(len(data.labels) * (1 - EVAL_FRACTION))
    n = len(data.labels) - k
    offsets = pa.array(range(n + 1), pa.int32())
    batch = pa.RecordBatch.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(data.features[k:, i], pa.float32())) for i in range(len(FEATURE_NAMES))],
        list(FEATURE_NAMES))
    return example_coder.RecordBatchToExamplesEncoder().encode(batch), data.labels[k:], k


def score(model_dir: str, examples: list[bytes], batch: int = 8192) -> dict[str, np.ndarray]:
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures[signature.SIGNATURE_NAME]
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(examples), batch):
        out = serve(**{signature.INPUT_EXAMPLES: tf.constant(examples[i:i + batch])})
        for key in (signature.SCORE, signature.DECISION, signature.THRESHOLD):
            parts.setdefault(key, []).append(out[key].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=None, help="full data set (default: fraudctl data fetch's copy)")
    parser.add_argument("--home", type=Path, default=None, help="FRAUD_HOME for the run (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp FRAUD_HOME")
    parser.add_argument("-v", "--verbose", action="store_true", help="library output on the terminal, not in the log")
    args = parser.parse_args(argv)
    csv = args.csv or load_paths().dataset_csv_gz
    if not csv.exists():
        print(f"bench/bench_pipeline.py: {csv} not found (fraudctl data fetch, or --csv PATH)", file=sys.stderr)
        return 1
    home = args.home or Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    paths = Paths(home=home.resolve(), cache=load_paths().cache)

    log = home / "bench-pipeline.log"
    with quiet_output(log, verbose=args.verbose) as console:
        code = _run(args, csv, home, paths, console)
    if not args.verbose:
        print(f"library output: {log}")
    return code


def _run(args: argparse.Namespace, csv: Path, home: Path, paths: Paths, console: Console) -> int:
    from fraud.metrics import average_precision, precision_at_k, precision_recall_at, roc_auc
    from fraud.model_info import read_model_info
    from pipeline import local_runner
    from pipeline.pipeline import MODEL_KINDS

    base_s, base_auprc = baseline(csv)
    console.echo(f"baseline (numpy + scikit-learn logistic regression, one process): {base_s:.1f}s, AUPRC {base_auprc:.3f}")

    t = time.perf_counter()
    rows = write_csv_span(csv, paths.exports_dir)
    span_s = time.perf_counter() - t
    console.echo(f"span written: {rows} rows in {span_s:.1f}s")

    t = time.perf_counter()
    with component_lines(console):
        local_runner.run(paths)  # the whole pipeline, infra validation included
    pipeline_s = time.perf_counter() - t
    times, mlmd_total = component_times(paths)
    console.echo(f"\npipeline wall time: {pipeline_s:.1f}s ({pipeline_s / 60:.1f} min; {mlmd_total:.1f}s from the first "
          f"execution to the last in MLMD) = {pipeline_s / base_s:.1f}x the baseline")
    for node, seconds, state in times:
        console.echo(f"  {node:28s} {seconds:7.1f}s  {state}")

    examples, labels, start = eval_examples(csv)
    console.echo(f"\neval rows: {len(labels)} from index {start}, {int(labels.sum())} frauds")
    header = f"{'model':12s} {'AUPRC':>6s} {'ROC-AUC':>7s} {'P@100':>6s} {'threshold':>9s} {'precision':>9s} {'recall':>6s} {'alerts':>6s}  target"
    console.echo(header)
    served = None
    for kind in MODEL_KINDS:
        model_dir = next((paths.pipeline_root / f"Trainer_{kind}" / "model").iterdir()) / "Format-Serving"
        out = score(str(model_dir), examples)
        info = read_model_info(str(model_dir))
        s = out[signature.SCORE]
        p, r, alerts = precision_recall_at(labels, s, info["threshold"])
        assert np.array_equal(out[signature.DECISION], (s >= info["threshold"]).astype(np.int64))
        console.echo(f"{kind:12s} {average_precision(labels, s):6.3f} {roc_auc(labels, s):7.3f} "
              f"{precision_at_k(labels, s, 100):6.2f} {info['threshold']:9.4g} {p:9.3f} {r:6.3f} {alerts:6d}  "
              f"{info['threshold_target_text']} (validation: precision {info['threshold_on_validation']['precision']:.3f},"
              f" recall {info['threshold_on_validation']['recall']:.3f})")
    pushed = paths.serving_model_dir / signature.DEFAULT_MODEL_NAME
    if pushed.exists() and any(pushed.iterdir()):
        version = max(int(p.name) for p in pushed.iterdir() if p.name.isdigit())
        served = read_model_info(str(pushed / str(version)))["model"]
        console.echo(f"\nserved: {served} as version {version} under {pushed}")
    else:
        console.echo("\nserved: nothing pushed (no model blessed)")
    if not args.keep and args.home is None:
        for child in home.iterdir():
            if child.name != "bench-pipeline.log":
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
    else:
        console.echo(f"state kept in {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
