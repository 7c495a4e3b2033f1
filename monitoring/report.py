"""`fraudctl monitor report`: the monitor's snapshot as one self-contained HTML page.

Plots (matplotlib, embedded as base64 PNG): event and alert rate per window, precision/recall/AUPRC per
window with label coverage, the same over all retained events as labels arrived (wall clock), Jensen-Shannon
divergence per feature per checked window (skew against training, drift against the control), scoring
latency quantiles, and the score distribution. Tables: alerts raised, drift windows checked.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from fraud import report_kit
from fraud.errors import FraudError

HOUR_MS = 3_600_000


def load_snapshot(path: Path) -> dict:
    if not Path(path).is_file():
        raise FraudError(f"monitor snapshot {path} does not exist (run `fraudctl monitor run` first)")
    try:
        snap = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise FraudError(f"monitor snapshot {path} is not valid JSON ({exc})") from None
    if not isinstance(snap, dict) or "windows" not in snap:
        raise FraudError(f"monitor snapshot {path} has no windows (not written by `fraudctl monitor run`?)")
    return snap


def _times(windows: Sequence[dict]) -> list:
    import datetime as dt

    return [dt.datetime.fromtimestamp(w["start_ms"] / 1000, tz=dt.timezone.utc) for w in windows]


def _figure(title: str, height: float = 3.0) -> tuple[Any, Any]:
    fig, ax = report_kit.figure(figsize=(10, height), title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_rates(snap: dict) -> str | None:
    minute, hour = snap["windows"].get("1m", []), snap["windows"].get("1h", [])
    if not hour and not minute:
        return None
    fig, ax = _figure("Alert rate (fraction of transactions flagged) per window")
    if minute:
        ax.plot(_times(minute), [w["alert_rate"] for w in minute], lw=0.8, alpha=0.6, label="per minute")
    if hour:
        ax.step(_times(hour), [w["alert_rate"] for w in hour], where="post", lw=2, label="per hour")
    limit = snap.get("thresholds", {}).get("max_alert_rate")
    if limit is not None:
        ax.axhline(limit, color="red", ls="--", lw=1, label=f"threshold {limit:g}")
    ax2 = ax.twinx()
    if hour:
        ax2.step(_times(hour), [w["event_rate_per_s"] for w in hour], where="post", color="gray", lw=1,
                 label="events/s (hourly)")
    ax2.set_ylabel("events per second")
    ax.set_ylabel("alert rate")
    ax.legend(loc="upper left", fontsize=8)
    return report_kit.image(fig, ax.get_title())


def plot_quality(snap: dict) -> str | None:
    hour = [w for w in snap["windows"].get("1h", []) if w["labelled"]]
    if not hour:
        return None
    fig, ax = _figure("Precision, recall and AUPRC per hour (labelled events so far)")
    t = _times(hour)
    for key, style in (("precision", "o-"), ("recall", "s-"), ("auprc", "^-")):
        ax.plot(t, [w[key] if w[key] is not None else float("nan") for w in hour], style, ms=3, label=key)
    ax.bar(t, [w["label_coverage"] for w in hour], width=1 / 24 * 0.9, align="edge", alpha=0.15, color="gray",
           label="label coverage")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    return report_kit.image(fig, ax.get_title())


def plot_label_progress(snap: dict) -> str | None:
    progress = [p for p in snap.get("label_progress", []) if p.get("labelled")]
    if len(progress) < 2:
        return None
    import datetime as dt

    fig, ax = _figure("Precision and recall over all retained events, as labels arrive (wall clock)")
    t = [dt.datetime.fromtimestamp(p["at_ms"] / 1000, tz=dt.timezone.utc) for p in progress]
    for key in ("precision", "recall", "auprc"):
        ax.plot(t, [p[key] if p[key] is not None else float("nan") for p in progress], label=key)
    ax2 = ax.twinx()
    ax2.plot(t, [p["labelled"] / max(1, p["scored"]) for p in progress], color="gray", ls=":", label="labelled")
    ax2.set_ylabel("fraction labelled")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    return report_kit.image(fig, ax.get_title())


def plot_drift(snap: dict) -> str | None:
    results = snap.get("drift", [])
    if not results:
        return None
    import numpy as np

    features = [f for f in snap.get("drift_features", []) if any(f in r["skew_jsd"] for r in results)]
    if not features:
        return None
    matrix = np.array([[r["skew_jsd"].get(f, np.nan) for r in results] for f in features])
    from matplotlib.patches import Rectangle

    fig, ax = _figure("Jensen-Shannon divergence per feature against the training data (skew), per checked "
                      "window; boxes: over the threshold", height=max(3.0, 0.22 * len(features)))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(0.5, float(np.nanmax(matrix))))
    ax.set_yticks(range(len(features)), features, fontsize=7)
    labels = [time.strftime("%m-%d %H:%M", time.gmtime(r["window_start_ms"] / 1000)) for r in results]
    step = max(1, len(labels) // 12)
    ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=45, fontsize=7, ha="right")
    for j, r in enumerate(results):
        for f in r["skewed"]:
            if f in features:
                i = features.index(f)
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    fig.colorbar(image, ax=ax, label="JSD")
    ax.grid(False)
    return report_kit.image(fig, ax.get_title())


def plot_latency(snap: dict) -> str | None:
    windows = snap["windows"].get("1m") or snap["windows"].get("1h", [])
    if not windows:
        return None
    fig, ax = _figure("Scoring latency per window (transaction record -> score produced)")
    t = _times(windows)
    for key, label in (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99")):
        ax.plot(t, [w[key] for w in windows], lw=1, label=label)
    limit = snap.get("thresholds", {}).get("max_latency_p99_ms")
    if limit is not None:
        ax.axhline(limit, color="red", ls="--", lw=1, label=f"p99 threshold {limit:g} ms")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left", fontsize=8)
    return report_kit.image(fig, ax.get_title())


def plot_scores(snap: dict) -> str | None:
    hour = snap["windows"].get("1h", [])
    if not hour:
        return None
    import numpy as np

    fig, ax = _figure("Score distribution per hour (share of the hour's events per score bin)")
    hist = np.array([w["score_hist"] for w in hour], dtype=float)
    hist = hist / np.maximum(1, hist.sum(axis=1, keepdims=True))
    image = ax.imshow(hist.T, aspect="auto", origin="lower", cmap="magma", extent=(0, len(hour), 0, 1),
                      vmax=max(1e-6, float(np.quantile(hist, 0.98))))
    ax.set_ylabel("score")
    labels = [time.strftime("%m-%d %H:%M", time.gmtime(w["start_ms"] / 1000)) for w in hour]
    step = max(1, len(labels) // 12)
    ax.set_xticks([i + 0.5 for i in range(0, len(labels), step)], labels[::step], rotation=45, fontsize=7,
                  ha="right")
    fig.colorbar(image, ax=ax, label="share")
    ax.grid(False)
    return report_kit.image(fig, ax.get_title())


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))


def render(snap: dict) -> str:
    parts = [f"<p>Model: {html.escape(str(snap.get('model_name')))}; snapshot of "
             f"{_when(snap.get('generated_at_ms', 0))} UTC. Training statistics: "
             f"{html.escape(str(snap.get('training_statistics')))}.</p>"]
    stats = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in snap.get("stats", {}).items())
    parts.append(f"<p>{html.escape(stats)}</p>")
    for title, plot in (("Alert rate", plot_rates), ("Precision and recall per window", plot_quality),
                        ("Precision and recall as labels arrive", plot_label_progress),
                        ("Drift per feature", plot_drift), ("Scoring latency", plot_latency),
                        ("Score distribution", plot_scores)):
        parts.append(f"<h2>{html.escape(title)}</h2>{plot(snap) or '<p class=none>No data yet.</p>'}")
    alerts = snap.get("alerts", [])
    alert_rows = [(_when(a["window_start_ms"]), a["kind"], a["severity"], ", ".join(a.get("features", [])),
                   f"{a['value']:.4g}", f"{a['threshold']:.4g}", a["message"]) for a in alerts]
    drift_rows = [(_when(r["window_start_ms"]), r["rows"], r["control"], ", ".join(r["drifted"]) or "-",
                   ", ".join(r["skewed"]) or "-", ", ".join(r["schema_anomalies"]) or "-")
                  for r in snap.get("drift", [])]
    parts.append(f"<h2>Alerts ({len(alerts)})</h2>")
    parts.append(report_kit.table(("window", "kind", "severity", "features", "value", "threshold", "message"),
                                  alert_rows) if alert_rows else "<p class=none>No alerts.</p>")
    parts.append(f"<h2>Drift windows checked ({len(drift_rows)})</h2>")
    parts.append(report_kit.table(("window", "rows", "control", "drifted", "skewed", "schema anomalies"), drift_rows)
                 if drift_rows else "<p class=none>No drift window checked yet.</p>")
    return report_kit.page("Fraud model monitor", parts)


def write_report(snapshot: Path, out: Path) -> Path:
    return report_kit.write_page(out, render(load_snapshot(snapshot)))
