"""Model quality without the rest of the pipeline: retrain one model on a kept pipeline run's
Transform outputs and score the eval split, in one process (seconds to minutes instead of a run).

    .venv/bin/python bench/bench_pipeline.py --csv ... --home /tmp/bench      # once, keeps its state
    .venv/bin/python bench/bench_model_quality.py --home /tmp/bench autoencoder '{"seeds": 2}'
    .venv/bin/python bench/bench_model_quality.py --home /tmp/bench supervised '{"widths": [128, 64]}'

The same code as the Trainer (`pipeline.models.base.run_training`); the configuration is a JSON object
of the kind's config fields (pipeline/models/<kind>.py). Baseline in the same run: the model the pipeline
trained with the default configuration, scored on the same rows (ratio of AUPRCs printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fraud import signature
from fraud.features import LABEL_KEY


def _latest(directory: Path) -> Path:
    return max(directory.iterdir(), key=lambda p: int(p.name))


def eval_examples(root: Path) -> tuple[list[bytes], np.ndarray]:
    import tensorflow as tf

    split = _latest(root / "KafkaExportExampleGen" / "examples") / "Split-eval"
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, split.glob("*"))), compression_type="GZIP")]
    parsed = tf.io.parse_example(tf.constant(records), {LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64)})
    return records, parsed[LABEL_KEY].numpy().reshape(-1)


def score(model_dir: Path, examples: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    from fraud.model_info import load_custom_ops

    load_custom_ops(str(model_dir))
    serve = tf.saved_model.load(str(model_dir)).signatures[signature.SIGNATURE_NAME]
    return np.concatenate([serve(**{signature.INPUT_EXAMPLES: tf.constant(examples[i:i + 8192])})[signature.SCORE]
                           .numpy() for i in range(0, len(examples), 8192)])


def main(argv: list[str] | None = None) -> int:
    from fraud.metrics import average_precision, precision_at_k, precision_recall_at, roc_auc
    from pipeline.models import KINDS
    from pipeline.models.base import TrainerInputs, run_training

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="FRAUD_HOME of a kept bench/bench_pipeline.py run")
    parser.add_argument("kind", choices=tuple(KINDS))
    parser.add_argument("config", nargs="?", default="{}", help="JSON object of config fields")
    args = parser.parse_args(argv)
    root = args.home / "tfx"
    kind = KINDS[args.kind]
    config = kind.config(json.loads(args.config))
    transformed = _latest(root / "Transform" / "transformed_examples")
    out = Path(tempfile.mkdtemp(prefix="model-quality-"))
    inputs = TrainerInputs(train_files=[str(transformed / "Split-train" / "*")],
                           validation_files=[str(transformed / "Split-validation" / "*")],
                           transform_output_dir=str(_latest(root / "Transform" / "transform_graph")),
                           serving_model_dir=str(out))
    start = time.perf_counter()
    info = run_training(kind, inputs, config, log=lambda m: print(f"  {m}"))
    seconds = time.perf_counter() - start
    examples, labels = eval_examples(root)
    s = score(out, examples)
    base = score(_latest(root / f"Trainer_{args.kind}" / "model") / "Format-Serving", examples)
    p, r, alerts = precision_recall_at(labels, s, info["threshold"])
    ap, base_ap = average_precision(labels, s), average_precision(labels, base)
    print(f"{args.kind} {json.dumps(json.loads(args.config))}: trained in {seconds:.0f}s; eval rows {len(labels)}, "
          f"frauds {int(labels.sum())}")
    print(f"  AUPRC {ap:.3f} (pipeline's default model {base_ap:.3f}, ratio {ap / base_ap:.2f}), ROC-AUC "
          f"{roc_auc(labels, s):.3f}, P@100 {precision_at_k(labels, s, 100):.2f}, at threshold {info['threshold']:.4g}: "
          f"precision {p:.3f} recall {r:.3f} alerts {alerts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
