"""The pipeline report's plots render PNGs from TFMA-shaped data without touching pyplot's global state."""

from __future__ import annotations

import base64

from pipeline import report


def _evaluation() -> report.Evaluation:
    curve = [{"tp": tp, "fp": fp, "fn": 10 - tp, "tn": 990 - fp} for tp, fp in ((10, 500), (8, 20), (5, 2), (1, 0))]
    histogram = [(i / 10, (i + 1) / 10, 100.0, float(i)) for i in range(10)]
    return report.Evaluation(model="autoencoder", overall={"auc_precision_recall": 0.5},
                             decision={"tp": 5.0, "fp": 2.0, "fn": 5.0}, slices=[], curve=curve,
                             histogram=histogram, blessed=True, validation_failures=[])


def test_plots_are_png_images_and_leave_pyplot_alone():
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    figures = plt.get_fignums()
    ev = _evaluation()
    for html in (report.pr_curve_plot([ev], {"autoencoder": 0.5}), report.score_histogram_plot(ev),
                 report.calibration_plot(ev)):
        data = base64.b64decode(html.split("base64,", 1)[1].split('"', 1)[0])
        assert data.startswith(b"\x89PNG") and len(data) > 2000
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figures
