"""The walkthrough notebook (notebooks/walkthrough.ipynb) runs top to bottom on small data.

The notebook is executed with nbclient in a kernel of this interpreter (a kernelspec written to a
temporary JUPYTER_PATH; nothing is written to the user's home), with small parameters injected after its
`parameters` cell, in a temporary WORKDIR. Every code cell must run without error, and the outputs must be
real: TFDV's statistics view, tables and plots, a pushed model, and a summary line whose figures agree
with what the notebook wrote to WORKDIR.

A static test checks the committed file: outputs cleared, a `parameters` cell, no shell/pip lines, no
absolute paths, no sys.path edits, no feature list of its own.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

from fraud.features import FEATURE_NAMES
from fraud.paths import SOURCE_ROOT
from fraud.signature import DEFAULT_MODEL_NAME

NOTEBOOK = SOURCE_ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL_NAME = "fraud-walkthrough-test"
SUMMARY_PREFIX = "WALKTHROUGH_SUMMARY "
#: Small and fast: the flow, not the model quality, is under test (1 seed, few epochs, no warm-up server).
PARAMETERS = {"ROWS": 3000, "SEEDS": 1, "EPOCHS": 4, "TRAIN_STEPS": None, "MIN_AUPRC": 0.0,
              "INFRA_VALIDATION": "local"}


def _load() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_index(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_committed_notebook_is_clean() -> None:
    nb = _load()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "commit the notebook without outputs"
    params = nb.cells[_parameters_index(nb)]
    defined = set(re.findall(r"^([A-Z_]+)\s*=", params.source, re.M))
    assert set(PARAMETERS) | {"WORKDIR"} <= defined, f"parameters cell lacks {set(PARAMETERS) - defined}"
    source = "\n".join(c.source for c in code)
    assert not re.search(r"^\s*[!%]", source, re.M), "no shell escapes or magics (pip installs belong to setup-env)"
    assert "sys.path" not in source
    assert not re.search(r"""["'](/(home|work|tmp|usr|root)\b|[A-Za-z]:\\)""", source), "no absolute paths"
    # Feature names come from fraud.features: no literal list of them in the notebook.
    assert not [name for name in FEATURE_NAMES if f'"{name}"' in source or f"'{name}'" in source]
    assert "from fraud.features import" in source and "local_runner.local_pipeline(" in source
    assert "InteractiveContext(" in source and "context.run(" in source


def _kernelspec_env(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernelspec for this interpreter in a temporary JUPYTER_PATH; Jupyter's, IPython's and
    matplotlib's per-user directories redirected there too."""
    spec_dir = tmp / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fraud venv (test)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    for var, sub in (("JUPYTER_DATA_DIR", "jupyter-data"), ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
                     ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (tmp / sub).mkdir()
        monkeypatch.setenv(var, str(tmp / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")


def _outputs(cell: nbformat.NotebookNode) -> tuple[str, list[dict]]:
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")
    data = [o.data for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
    return text, data


@pytest.mark.integration
@pytest.mark.slow  # ~110 s: the default suite must stay under 25 minutes on a 2-core machine
@pytest.mark.timeout(900)
def test_walkthrough_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    _kernelspec_env(tmp_path, monkeypatch)
    workdir = tmp_path / "work"
    nb = _load()
    injected = {**PARAMETERS, "WORKDIR": str(workdir)}
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in injected.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb) + 1, cell)

    started = time.monotonic()
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=600, startup_timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError naming the cell on the first error
    finally:
        nbformat.write(nb, tmp_path / "executed.ipynb")  # kept with pytest's temporary directories
    print(f"notebook executed in {time.monotonic() - started:.0f}s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]

    texts, data = zip(*(_outputs(c) for c in code), strict=True)
    all_data = [d for ds in data for d in ds]
    stdout = "".join(texts)
    # TFDV's Facets overview (statistics), its schema and anomalies tables, TFMA tables, matplotlib plots.
    html = [d["text/html"] for d in all_data if "text/html" in d]
    assert any("facets-overview" in h for h in html), "no TFDV statistics view"
    assert any("auc_precision_recall" in h for h in html), "no TFMA metrics table"
    assert sum("image/png" in d for d in all_data) >= 2, "expected the PR curve and score histogram figures"
    # One Evaluator, on the model the selector chose: one TFMA score histogram.
    assert sum("<img" in h and "base64" in h for h in html) >= 1, "expected the TFMA score histogram"
    assert "0 anomalies" in stdout  # the clean span passes ExampleValidator and the gate
    assert any("Out-of-range values" in h for h in html), "the corrupted batch's anomaly is not shown"

    (summary_line,) = [line for line in stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
    summary = json.loads(summary_line[len(SUMMARY_PREFIX):])
    # The eval split is the newest 30% of the rows, every one scored through the served signature.
    assert summary["rows"] == PARAMETERS["ROWS"]
    assert summary["scored_examples"] == round(PARAMETERS["ROWS"] * 0.3)
    assert summary["frauds"] >= 1
    assert summary["selected_model"] in ("autoencoder", "supervised")
    assert summary["blessed"] and summary["pushed"]
    assert 0.0 < summary["threshold"] < 1.0
    # The notebook scored the same rows with the same model as the Evaluator: the served decisions give
    # exactly TFMA's confusion matrix of the `decision` output. (AUC/AUPRC only approximately: TFMA bins
    # the score into 10,000 equal-width thresholds.)
    tfma = summary["tfma_decision"]
    assert summary["tfma_example_count"] == summary["scored_examples"]
    assert (summary["flagged"], summary["flagged_frauds"]) == (tfma["tp"] + tfma["fp"], tfma["tp"]), summary
    assert tfma["tp"] + tfma["fn"] == summary["frauds"]
    # The served scores rank frauds well above the base rate.
    base_rate = summary["frauds"] / summary["scored_examples"]
    assert summary["auprc"] > 5 * base_rate and summary["auc"] > 0.6, summary
    assert 0.0 < summary["tfma_auprc"] <= 1.0

    # What the notebook wrote: a complete span, ML Metadata, version 1 of the served model.
    assert (workdir / "exports" / "span-00000001" / "_SUCCESS").is_file()
    assert (workdir / "tfx" / "metadata.sqlite").is_file()
    assert (workdir / "serving" / "models" / DEFAULT_MODEL_NAME / "1" / "saved_model.pb").is_file()
