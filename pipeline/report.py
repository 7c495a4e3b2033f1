"""`fraudctl report`: the latest pipeline run as one HTML page a person can read.

Everything comes from the run's own records: MLMD (which components ran, what they produced), TFDV
(statistics and anomalies of each split), TFMA (metrics, slices, plots of each evaluated model), the
ModelSelector's decision (on validation), every candidate's eval figures with their uncertainty
(ModelScorecard), the Evaluator's verdict against the serving model and the Pusher's version. Plots (PR curve, score histogram by class,
calibration) are drawn with matplotlib and embedded as PNG, so the page is one self-contained file.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraud import report_kit
from fraud.errors import FraudError
from fraud.features import AMOUNT_BAND_KEY, AMOUNT_BAND_LABELS, FEATURE_NAMES, HOUR_OF_DAY_KEY
from fraud.paths import load_paths
from fraud.signature import DECISION, SCORE

_SUMMARY_METRICS = ("example_count", "auc", "auc_precision_recall", "calibration", "mean_label", "mean_prediction")


# ---------------------------------------------------------------------------------------------
# What the run recorded (MLMD)


@dataclass
class RunRecord:
    run_id: str
    started_ms: int
    states: dict[str, str] = field(default_factory=dict)  # node id -> execution state
    outputs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # node -> key -> artifacts
    errors: dict[str, str] = field(default_factory=dict)


def latest_run(metadata_path: Path, run_id: str | None = None) -> RunRecord:
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not Path(metadata_path).exists():
        raise FraudError(f"{metadata_path}: no pipeline metadata yet (run `fraudctl train` first)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id)
    if run_id is not None:
        runs = [r for r in runs if r.name == run_id]
    if not runs:
        raise FraudError(f"{metadata_path}: no pipeline run {run_id or ''} recorded".replace("  ", " "))
    run = runs[-1]
    node_of = {}
    for ctx in store.get_contexts_by_type("node"):
        for e in store.get_executions_by_context(ctx.id):
            node_of[e.id] = ctx.name.split(".")[-1]
    record = RunRecord(run_id=run.name, started_ms=run.create_time_since_epoch)
    executions = sorted(store.get_executions_by_context(run.id), key=lambda e: e.id)
    for e in executions:
        node = node_of.get(e.id, f"execution-{e.id}")
        record.states[node] = metadata_store_pb2.Execution.State.Name(e.last_known_state)
        if "__execution_result__" in e.custom_properties:
            record.errors[node] = e.custom_properties["__execution_result__"].string_value
    events = store.get_events_by_execution_ids([e.id for e in executions])
    ids = [ev.artifact_id for ev in events if ev.type == metadata_store_pb2.Event.OUTPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id(ids)} if ids else {}
    for ev in events:
        if ev.type != metadata_store_pb2.Event.OUTPUT or ev.artifact_id not in artifacts:
            continue
        key = next((s.key for s in ev.path.steps if s.HasField("key")), "output")
        node = node_of.get(ev.execution_id, "?")
        record.outputs.setdefault(node, {}).setdefault(key, []).append(artifacts[ev.artifact_id])
    return record


def artifact_property(artifact: Any, name: str) -> Any:
    """An MLMD artifact's custom property value (None when it has none)."""
    if name not in artifact.custom_properties:
        return None
    v = artifact.custom_properties[name]
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


# ---------------------------------------------------------------------------------------------
# Reading TFDV and TFMA results


def anomalies_lines(artifact: Any) -> list[str]:
    from components.validation_gate import summarize_anomalies

    names = [p.name[len("Split-"):] for p in Path(artifact.uri).glob("Split-*")]
    return summarize_anomalies(artifact.uri, sorted(names))


def statistics_rows(artifact: Any, features: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
    """split -> feature -> {mean, std, min, max, count}."""
    import tensorflow_data_validation as tfdv

    out: dict[str, dict[str, dict[str, float]]] = {}
    for split_dir in sorted(Path(artifact.uri).glob("Split-*")):
        path = split_dir / "FeatureStats.pb"
        if not path.exists():
            continue
        stats = tfdv.load_stats_binary(str(path))
        rows: dict[str, dict[str, float]] = {}
        for dataset in stats.datasets:
            for f in dataset.features:
                name = f.path.step[0] if f.path.step else f.name
                if name in features and f.HasField("num_stats"):
                    ns = f.num_stats
                    rows[name] = {"count": float(ns.common_stats.num_non_missing), "mean": ns.mean,
                                  "std": ns.std_dev, "min": ns.min, "max": ns.max}
        out[split_dir.name[len("Split-"):]] = rows
    return out


@dataclass
class Evaluation:
    model: str
    overall: dict[str, float]
    decision: dict[str, float]
    slices: list[tuple[str, dict[str, float]]]
    curve: list[dict[str, float]]  # confusion matrices at thresholds (score output)
    histogram: list[tuple[float, float, float, float]]  # (lower, upper, examples, frauds)
    blessed: bool | None
    validation_failures: list[str]


def _slice_name(slice_key: Any) -> str:
    parts = []
    for k in slice_key.single_slice_keys:
        value = k.int64_value if k.HasField("int64_value") else k.float_value if k.HasField("float_value") \
            else k.bytes_value.decode()
        if k.column == AMOUNT_BAND_KEY and isinstance(value, int) and 0 <= value < len(AMOUNT_BAND_LABELS):
            value = f"{value} ({AMOUNT_BAND_LABELS[value]})"
        parts.append(f"{k.column} = {value}")
    return ", ".join(parts) or "overall"


def _slice_order(item: tuple[str, dict[str, float]]) -> tuple[int, str, float]:
    name = item[0]
    if name == "overall":
        return (0, "", 0.0)
    column, _, value = name.partition(" = ")
    try:
        number = float(value.split(" ")[0])
    except ValueError:
        number = 0.0
    return (1, column, number)


def read_evaluation(model: str, uri: str, blessed: bool | None) -> Evaluation:
    import tensorflow_model_analysis as tfma

    overall: dict[str, float] = {}
    decision: dict[str, float] = {}
    slices: list[tuple[str, dict[str, float]]] = []
    for m in tfma.load_metrics(uri):
        values: dict[str, float] = {}
        for kv in m.metric_keys_and_values:
            key = kv.key
            if key.is_diff or key.model_name not in ("", "candidate") or key.HasField("sub_key"):
                continue
            if kv.value.HasField("double_value"):
                target = values if key.output_name == SCORE else decision if not m.slice_key.single_slice_keys \
                    and key.output_name == DECISION else None
                if target is not None:
                    target[key.name] = kv.value.double_value.value
            elif kv.value.HasField("confusion_matrix_at_thresholds") and key.output_name == DECISION \
                    and not m.slice_key.single_slice_keys:
                (matrix,) = kv.value.confusion_matrix_at_thresholds.matrices
                decision.update(tp=matrix.true_positives, fp=matrix.false_positives, tn=matrix.true_negatives,
                                fn=matrix.false_negatives)
        name = _slice_name(m.slice_key)
        if name == "overall":
            overall = values
        slices.append((name, values))
    curve: list[dict[str, float]] = []
    histogram: list[tuple[float, float, float, float]] = []
    for p in tfma.load_plots(uri):
        if p.slice_key.single_slice_keys:
            continue
        for kv in p.plot_keys_and_values:
            if kv.key.output_name != SCORE or kv.key.model_name not in ("", "candidate"):
                continue
            if kv.value.HasField("confusion_matrix_at_thresholds"):
                curve = [{"threshold": c.threshold, "tp": c.true_positives, "fp": c.false_positives,
                          "fn": c.false_negatives, "tn": c.true_negatives}
                         for c in kv.value.confusion_matrix_at_thresholds.matrices]
            if kv.value.HasField("calibration_histogram_buckets"):
                for b in kv.value.calibration_histogram_buckets.buckets:
                    if b.num_weighted_examples.value:
                        histogram.append((b.lower_threshold_inclusive, b.upper_threshold_exclusive,
                                          b.num_weighted_examples.value, b.total_weighted_label.value))
    failures = []
    try:
        result = tfma.load_validation_result(uri)
        for per_slice in result.metric_validations_per_slice:
            for f in per_slice.failures:
                failures.append(f"{_slice_name(per_slice.slice_key)}: {f.metric_key.name} = "
                                f"{f.metric_value.double_value.value:.4f} fails {_threshold_text(f.metric_threshold)}")
    except Exception:  # noqa: BLE001 - an evaluation without validation output still renders
        pass
    slices.sort(key=_slice_order)
    return Evaluation(model, overall, decision, slices, curve, histogram, blessed, failures)


def _threshold_text(threshold: Any) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        vt = threshold.value_threshold
        if vt.HasField("lower_bound"):
            parts.append(f">= {vt.lower_bound.value:g}")
    if threshold.HasField("change_threshold"):
        parts.append(f"change >= {threshold.change_threshold.absolute.value:g} vs baseline")
    return " and ".join(parts) or "threshold"


# ---------------------------------------------------------------------------------------------
# Plots


def pr_curve_plot(evaluations: list[Evaluation], thresholds: Mapping[str, float]) -> str:
    fig, ax = report_kit.figure(figsize=(5.5, 4))
    for ev in evaluations:
        pts = [(c["tp"] / (c["tp"] + c["fn"]), c["tp"] / (c["tp"] + c["fp"]))
               for c in ev.curve if c["tp"] + c["fn"] > 0 and c["tp"] + c["fp"] > 0]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{ev.model} (AUPRC {ev.overall.get('auc_precision_recall', math.nan):.3f})")
        if ev.model in thresholds and ev.decision:
            tp, fp, fn = ev.decision.get("tp", 0), ev.decision.get("fp", 0), ev.decision.get("fn", 0)
            if tp + fn and tp + fp:
                ax.plot([tp / (tp + fn)], [tp / (tp + fp)], "o", color=ax.lines[-1].get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall on the eval split (dot: shipped threshold)")
    ax.legend(loc="lower left", fontsize=8)
    return report_kit.image(fig)


def score_histogram_plot(ev: Evaluation, bins: int = 40) -> str:
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    normal = np.zeros(bins)
    fraud = np.zeros(bins)
    for lower, upper, n, frauds in ev.histogram:
        mid = min(max((max(lower, 0.0) + min(upper, 1.0)) / 2, 0.0), 1.0 - 1e-9)
        i = int(mid * bins)
        normal[i] += n - frauds
        fraud[i] += frauds
    fig, axes = report_kit.figure(1, 2, figsize=(9, 3.2))
    for ax, values, name in ((axes[0], normal, "normal"), (axes[1], fraud, "fraud")):
        ax.bar(edges[:-1], values, width=1.0 / bins, align="edge", color="tab:blue" if name == "normal" else "tab:red")
        ax.set_yscale("log" if values.max() > 100 else "linear")
        ax.set_title(f"{ev.model}: score of {name} rows ({int(values.sum())})")
        ax.set_xlabel("score")
    return report_kit.image(fig)


def calibration_plot(ev: Evaluation, bins: int = 10) -> str:
    import numpy as np

    n = np.zeros(bins)
    label = np.zeros(bins)
    pred = np.zeros(bins)
    for lower, upper, count, frauds in ev.histogram:
        mid = min(max((max(lower, 0.0) + min(upper, 1.0)) / 2, 0.0), 1.0 - 1e-9)
        i = int(mid * bins)
        n[i] += count
        label[i] += frauds
        pred[i] += mid * count
    ok = n > 0
    fig, ax = report_kit.figure(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(pred[ok] / n[ok], label[ok] / n[ok], "o-")
    ax.set_xlabel("mean score")
    ax.set_ylabel("fraud rate")
    ax.set_title(f"{ev.model}: calibration")
    return report_kit.image(fig)


# ---------------------------------------------------------------------------------------------
# The page


def threshold_table(ev: Evaluation, shipped: float | None) -> str:
    rows = []
    picks = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    for t in picks:
        best = min(ev.curve, key=lambda c: abs(c["threshold"] - t), default=None)
        if best is None:
            continue
        alerts = best["tp"] + best["fp"]
        positives = best["tp"] + best["fn"]
        rows.append([f"{best['threshold']:.3f}", alerts, best["tp"], best["fp"],
                     best["tp"] / alerts if alerts else math.nan, best["tp"] / positives if positives else math.nan])
    if shipped is not None and ev.decision:
        d = ev.decision
        alerts = d.get("tp", 0) + d.get("fp", 0)
        rows.append([f"{shipped:.4g} (shipped)", alerts, d.get("tp", 0), d.get("fp", 0),
                     d.get("precision", math.nan), d.get("recall", math.nan)])
    return report_kit.table(["threshold", "alerts", "frauds caught", "false alarms", "precision", "recall"], rows)


def render(record: RunRecord, model_infos: Mapping[str, Mapping[str, Any]]) -> str:
    """The HTML page for one run."""

    out = [f"<p class='small'>started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.started_ms / 1000))}; "
            f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]

    # Outcome
    selector = record.outputs.get("ModelSelector", {}).get("model", [])
    verdict = record.outputs.get("Evaluator", {}).get("blessing", [])
    pushed = record.outputs.get("Pusher", {}).get("pushed_model", [])
    outcome = []
    if any(s == "FAILED" for s in record.states.values()):
        failed = [n for n, s in record.states.items() if s == "FAILED"]
        outcome.append(f"<p class='bad'>The run stopped: {', '.join(failed)} failed.</p>")
        for n in failed:
            if record.errors.get(n):
                outcome.append(f"<pre>{html.escape(record.errors[n][:3000])}</pre>")
    if selector:
        m = selector[0]
        blessed = bool(verdict) and bool(artifact_property(verdict[0], "blessed"))
        outcome.append(f"<p>Model selected on validation: <b>{html.escape(str(artifact_property(m, 'selected_model')))}"
                       f"</b>, {'<span class=ok>blessed</span>' if blessed else '<span class=bad>not blessed</span>'} "
                       f"by the Evaluator against the serving model.</p>")
    if pushed:
        p = pushed[0]
        if artifact_property(p, "pushed"):
            outcome.append(f"<p class='ok'>Pushed as version {html.escape(str(artifact_property(p, 'pushed_version')))} to "
                           f"{html.escape(str(artifact_property(p, 'pushed_destination')))}.</p>")
        else:
            outcome.append("<p class='bad'>Nothing pushed.</p>")
    out += ["<h2>Outcome</h2>", *outcome]
    out.append(report_kit.table(["component", "state"], sorted(record.states.items())))

    # Data
    examples = record.outputs.get("KafkaExportExampleGen", {}).get("examples", [])
    if examples:
        e = examples[0]
        counts = [(k, artifact_property(e, k)) for k in sorted(e.custom_properties) if k.startswith("rows_")]
        out += ["<h2>Data</h2>", f"<p>span {artifact_property(e, 'span')}</p>", report_kit.table(["count", "rows"], counts)]
    anomalies = record.outputs.get("ExampleValidator", {}).get("anomalies", [])
    if anomalies:
        lines = anomalies_lines(anomalies[0])
        out.append("<h3>Anomalies (TFDV against the curated schema)</h3>")
        out.append("<p class='ok'>None.</p>" if not lines else
                   "<ul>" + "".join(f"<li class='bad'>{html.escape(line)}</li>" for line in lines) + "</ul>")
    stats = record.outputs.get("StatisticsGen", {}).get("statistics", [])
    if stats:
        per_split = statistics_rows(stats[0], FEATURE_NAMES)
        splits = list(per_split)
        rows = []
        for name in FEATURE_NAMES:
            row: list[Any] = [name]
            for s in splits:
                st = per_split[s].get(name, {})
                row += [st.get("mean", math.nan), st.get("std", math.nan)]
            rows.append(row)
        headers = ["feature"] + [f"{s} {m}" for s in splits for m in ("mean", "std")]
        out += ["<h3>Feature statistics by split (TFDV)</h3>", report_kit.table(headers, rows)]

    # Models
    out += scorecard_section(record, model_infos)
    out += tuner_section(record)
    evaluations = []
    for node, keys in sorted(record.outputs.items()):
        if node.startswith("Evaluator") and keys.get("evaluation"):
            model = node[len("Evaluator_"):] if node.startswith("Evaluator_") else \
                str(artifact_property(selector[0], "selected_model")) if selector else "candidate"
            blessing = keys.get("blessing", [None])[0]
            evaluations.append(read_evaluation(model, keys["evaluation"][0].uri,
                                               bool(artifact_property(blessing, "blessed")) if blessing is not None else None))
    if evaluations:
        thresholds = {m: float(i["threshold"]) for m, i in model_infos.items() if "threshold" in i}
        out.append("<h2>The selected model on the eval split (TFMA, against the serving model)</h2>")
        rows = []
        for ev in evaluations:
            info = model_infos.get(ev.model, {})
            rows.append([ev.model, ev.overall.get("example_count", math.nan), ev.overall.get("auc_precision_recall", math.nan),
                         ev.overall.get("auc", math.nan), ev.overall.get("calibration", math.nan),
                         ev.decision.get("precision", math.nan), ev.decision.get("recall", math.nan),
                         info.get("threshold", math.nan), info.get("threshold_target_text", ""),
                         "yes" if ev.blessed else "no"])
        out.append(report_kit.table(["model", "examples", "AUPRC", "ROC AUC", "calibration", "precision @ shipped",
                           "recall @ shipped", "threshold", "target", "blessed"], rows))
        for ev in evaluations:
            if ev.validation_failures:
                out.append(f"<p>{html.escape(ev.model)} not blessed because:</p><ul>" +
                           "".join(f"<li>{html.escape(f)}</li>" for f in ev.validation_failures) + "</ul>")
        out.append(pr_curve_plot(evaluations, thresholds))
        for ev in evaluations:
            out.append(f"<h3>{html.escape(ev.model)}</h3>")
            if ev.decision:
                d = ev.decision
                out.append("<p>Confusion matrix at the shipped threshold</p>")
                out.append(report_kit.table(["", "flagged", "not flagged"],
                                  [["fraud", d.get("tp", 0), d.get("fn", 0)], ["normal", d.get("fp", 0), d.get("tn", 0)]]))
            out.append("<p>Thresholds</p>" + threshold_table(ev, thresholds.get(ev.model)))
            if ev.histogram:
                out.append(score_histogram_plot(ev) + calibration_plot(ev))
            out.append("<p>Slices</p>")
            out.append(report_kit.table(["slice", *_SUMMARY_METRICS],
                              [[name, *(vals.get(k, math.nan) for k in _SUMMARY_METRICS)] for name, vals in ev.slices]))
    out.append(f"<p class='small'>Slices: {AMOUNT_BAND_KEY} bands {', '.join(AMOUNT_BAND_LABELS)}; {HOUR_OF_DAY_KEY} "
               f"0-23 from Time.</p>")
    return report_kit.page(f"Fraud pipeline run {record.run_id}", out)


_SCORECARD_COLUMNS = (("validation_auprc", "validation AUPRC"), ("auprc", "eval AUPRC"), ("auprc_low", "95% low"),
                      ("auprc_high", "95% high"), ("roc_auc", "ROC AUC"), ("recall_at_1pct_fpr", "recall @ 1% FPR"),
                      ("precision_at_100", "precision @ 100"))


def scorecard_section(record: RunRecord, model_infos: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every candidate on the eval split (ModelScorecard) and how each was trained."""
    from components.scorecard import read_scorecard

    artifacts = record.outputs.get("ModelScorecard", {}).get("scorecard", [])
    if not artifacts:
        return []
    try:
        card = read_scorecard(artifacts[0].uri)
    except Exception:  # noqa: BLE001 - a missing file still renders the rest
        return []
    selected = record.outputs.get("ModelSelector", {}).get("model", [])
    chosen = str(artifact_property(selected[0], "selected_model")) if selected else ""
    rows = []
    for kind, figures in sorted(card["models"].items(), key=lambda kv: -(kv[1].get("auprc") or 0.0)):
        info = model_infos.get(kind, {})
        training = info.get("training", {})
        rows.append([kind + (" (selected)" if kind == chosen else ""), figures.get("rows"), figures.get("frauds"),
                     *(math.nan if figures.get(k) is None else figures[k] for k, _ in _SCORECARD_COLUMNS),
                     training.get("seconds", math.nan), info.get("warm_started_from") or "no"])
    return ["<h2>Every candidate on the eval split</h2>",
            "<p class='small'>Chosen on validation (never on eval). 95% interval: percentile bootstrap of AUPRC over "
            "eval rows. Recall at 1% FPR: share of frauds caught when at most 1% of normal rows are flagged.</p>",
            report_kit.table(["model", "rows", "frauds", *(t for _, t in _SCORECARD_COLUMNS), "training s", "warm start"], rows)]


def tuner_section(record: RunRecord) -> list[str]:
    """Every Tuner's trials (TFX Tuner's tuner_results.json), best first."""
    import json

    out = []
    for node, keys in sorted(record.outputs.items()):
        if not node.startswith("Tuner_") or not keys.get("tuner_results"):
            continue
        try:
            with open(os.path.join(keys["tuner_results"][0].uri, "tuner_results.json"), encoding="utf-8") as f:
                trials = json.load(f)
        except (OSError, ValueError):
            continue
        columns = sorted({k for t in trials for k in t} - {"trial_id", "score"})
        out += [f"<h3>{html.escape(node)}: trials (objective: validation AUPRC)</h3>",
                report_kit.table(["trial", "validation AUPRC", *columns],
                       [[t.get("trial_id"), t.get("score"), *(t.get(c) for c in columns)] for t in trials])]
    return out


def model_infos(record: RunRecord) -> dict[str, dict[str, Any]]:
    from fraud.model_info import read_model_info

    infos = {}
    for node, keys in record.outputs.items():
        if node.startswith("Trainer_") and keys.get("model"):
            path = os.path.join(keys["model"][0].uri, "Format-Serving")
            try:
                infos[node[len("Trainer_"):]] = read_model_info(path)
            except Exception:  # noqa: BLE001 - a model without its info file still gets a report
                continue
    return infos


def write_report(metadata_path: Path, out_dir: Path, run_id: str | None = None) -> Path:
    record = latest_run(metadata_path, run_id)
    page = render(record, model_infos(record))
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in record.run_id)
    path = out_dir / f"pipeline-{safe}.html"
    report_kit.write_page(path, page)
    report_kit.write_page(out_dir / "pipeline-latest.html", page)
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="render the latest pipeline run (TFMA + TFDV) as an HTML page")
    p.add_argument("--metadata", type=Path, default=None, help="MLMD sqlite (default: FRAUD_HOME/tfx/metadata.sqlite)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: FRAUD_HOME/reports)")
    p.add_argument("--run", default=None, help="pipeline run id (default: the latest)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    paths = load_paths()
    path = write_report(args.metadata or paths.metadata_path, args.out or paths.reports_dir, args.run)
    print(path)
    return 0
