"""Alert rules: closed windows and drift results in, AlertEvents out, each alert raised once.

Rules on the windows of `Thresholds.alert_granularity` (closed windows only, with at least `min_events`):
alert rate above `max_alert_rate`, p99 scoring latency above `max_latency_p99_ms`. Label-based rules wait
until the window's label coverage reaches `min_label_coverage` and it holds `min_positives` frauds:
precision below `min_precision`, recall below `min_recall`, AUPRC below `min_auprc`. Drift results give
`drift`, `skew` and `schema` alerts naming the features at fault.

The alert id is deterministic (kind, window size, window start, model), so `AlertBook` can tell an alert
it raised before (also across restarts: the monitor reads the alerts topic back on start) and a
consumer of the topic can drop duplicates by id.
"""

from __future__ import annotations

from collections.abc import Iterable

from fraud.contract import AlertEvent
from fraud.features import FEATURES
from monitoring.config import Thresholds
from monitoring.drift import DriftResult
from monitoring.windows import WindowStats


def alert_id(kind: str, granularity: str, start_ms: int, model: str | None = None) -> str:
    return f"{kind}/{granularity}/{start_ms}" + (f"/{model}" if model else "")


def _model_tag(w: WindowStats) -> str | None:
    return "v" + "+".join(str(v) for v in w.model_versions) if w.model_versions else None


def window_alerts(w: WindowStats, t: Thresholds, now_ms: int, model_name: str | None = None) -> list[AlertEvent]:
    """Alerts of one closed window (the caller checks it is closed and of the alert granularity)."""
    if w.events < t.min_events:
        return []
    version = w.model_versions[-1] if len(w.model_versions) == 1 else None
    out: list[AlertEvent] = []

    def add(kind: str, metric: str, value: float, threshold: float, message: str, severity: str = "warning") -> None:
        out.append(AlertEvent(alert_id=alert_id(kind, w.granularity, w.start_ms, _model_tag(w)), kind=kind,
                              severity=severity, metric=metric, value=float(value), threshold=float(threshold),
                              window_start_ms=w.start_ms, window_end_ms=w.end_ms, raised_at_ms=now_ms,
                              message=message, model_name=model_name, model_version=version,
                              details={"events": float(w.events), "labelled": float(w.labelled)}))

    if t.max_alert_rate is not None and w.alert_rate > t.max_alert_rate:
        add("alert_rate", "alert_rate", w.alert_rate, t.max_alert_rate,
            f"{w.flagged} of {w.events} transactions flagged ({w.alert_rate:.2%}), above {t.max_alert_rate:.2%}")
    if t.max_latency_p99_ms is not None and w.latency_p99_ms > t.max_latency_p99_ms:
        add("latency", "latency_p99_ms", w.latency_p99_ms, t.max_latency_p99_ms,
            f"p99 scoring latency {w.latency_p99_ms:.0f} ms, above {t.max_latency_p99_ms:.0f} ms")
    if w.label_coverage >= t.min_label_coverage and w.positives >= t.min_positives:
        basis = f"{w.labelled} labelled events, {w.positives} frauds"
        if t.min_precision is not None and (w.precision or 0.0) < t.min_precision:
            add("precision", "precision", w.precision or 0.0, t.min_precision,
                f"precision {w.precision or 0.0:.3f} below {t.min_precision:.3f} ({basis})", "critical")
        if t.min_recall is not None and w.recall is not None and w.recall < t.min_recall:
            add("recall", "recall", w.recall, t.min_recall,
                f"recall {w.recall:.3f} below {t.min_recall:.3f} ({basis})", "critical")
        if t.min_auprc is not None and w.auprc is not None and w.auprc < t.min_auprc:
            add("auprc", "auprc", w.auprc, t.min_auprc, f"AUPRC {w.auprc:.3f} below {t.min_auprc:.3f} ({basis})")
    return out


def drift_alerts(r: DriftResult, granularity: str, now_ms: int, model_name: str | None = None,
                 model_version: int | None = None) -> list[AlertEvent]:
    model = f"v{model_version}" if model_version is not None else None
    out: list[AlertEvent] = []
    for kind, names, values, against in (("drift", r.drifted, r.drift_jsd, r.control),
                                         ("skew", r.skewed, r.skew_jsd, "training")):
        if not names:
            continue
        worst = max(names, key=lambda n: values.get(n, 0.0))
        out.append(AlertEvent(
            alert_id=alert_id(kind, granularity, r.window_start_ms, model), kind=kind, severity="critical",
            metric="jensen_shannon_divergence", value=values.get(worst, 0.0), threshold=r.threshold,
            window_start_ms=r.window_start_ms, window_end_ms=r.window_end_ms, raised_at_ms=now_ms,
            message=f"{len(names)} feature(s) {kind} against {against} (Jensen-Shannon divergence > "
                    f"{r.threshold:g}, {r.rows} transactions): {', '.join(names)}",
            features=tuple(names), details={n: values[n] for n in names if n in values},
            model_name=model_name, model_version=model_version))
    if r.schema_anomalies:
        names = [n for n in r.schema_anomalies if n in FEATURES]
        text = "; ".join(f"{n}: {d}" for n, d in r.schema_anomalies.items())
        out.append(AlertEvent(
            alert_id=alert_id("schema", granularity, r.window_start_ms, model), kind="schema", severity="warning",
            metric="schema_anomalies", value=float(len(r.schema_anomalies)), threshold=0.0,
            window_start_ms=r.window_start_ms, window_end_ms=r.window_end_ms, raised_at_ms=now_ms,
            message=f"schema anomalies in serving data: {text}"[:2000], features=tuple(names),
            model_name=model_name, model_version=model_version))
    return out


class AlertBook:
    """Remembers which alert ids were raised, so each is sent once."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._seen: set[str] = set(known)
        self.raised: list[AlertEvent] = []

    def __contains__(self, alert_id: str) -> bool:
        return alert_id in self._seen

    def new(self, alerts: Iterable[AlertEvent]) -> list[AlertEvent]:
        fresh = []
        for a in alerts:
            if a.alert_id not in self._seen:
                self._seen.add(a.alert_id)
                fresh.append(a)
        self.raised += fresh
        return fresh
