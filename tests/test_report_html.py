"""`report.html` of `train` and `cv`: one self-contained file (no network), metrics rendered
generically, the per-fold spread; and in headless Chromium (marker `browser`, `make
test-browser`): no console errors, nothing fetched, tables and images there, the predictions
table sorts on a click, and a screenshot that is not blank."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from _browser import Browser, chromium
from _data import fast_args, make_tiny_cohort
from click.testing import CliRunner

from balnmp_mil.cli.group import main
from balnmp_mil.evaluation.html import SPREAD_KEYS
from balnmp_mil.evaluation.report_html import train_html

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?!data:|#)([^"']*)["']""", re.I)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    c = make_tiny_cohort(root, n_patients=30)
    res = invoke("train", c.features, "--labels", c.labels, "--task", "n0_vs_n+", "--model",
                 "abmil", "--out", root / "run", *fast_args(3))
    assert res.exit_code == 0, res.output
    res = invoke("cv", c.features, "--labels", c.labels, "--task", "n0_vs_n+", "--folds", "3",
                 "--out", root / "cv", *fast_args(2))
    assert res.exit_code == 0, res.output
    return root / "run", root / "cv"


def test_report_is_self_contained_and_complete(runs):
    run, cv = runs
    for folder in runs:
        text = (folder / "report.html").read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and "<style>" in text and "<script>" in text
        assert EXTERNAL.findall(text) == []  # every image is a data: URI, nothing linked
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text
    text = (run / "report.html").read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == 2  # ROC and training curves
    preds = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
    assert text.count("<tr>") >= len(preds) + 3
    assert 'class="sortable predictions"' in text and ">at_youden<" in text
    cv_text = (cv / "report.html").read_text(encoding="utf-8")
    folds = json.loads((cv / "metrics.json").read_text())["per_fold"]
    assert cv_text.count("<circle") == sum(  # one dot per fold, setting and metric
        1 for r in folds for k in ("auc", "accuracy", "sensitivity", "specificity", "ppv",
                                   "npv", "f1") if r.get(k) is not None)
    assert "auc_sd" in cv_text and "pooled" in cv_text


def test_cohort_heatmaps_are_linked_per_patient(runs):
    run, _ = runs
    metrics = json.loads((run / "metrics.json").read_text())
    pid = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})["patient_id"][0]
    text = train_html(run, metrics, {}, heatmaps={pid: [("s1", "s1.png")], "x": [("x", "x.png")]},
                      failed={"bad": "cannot read bad.svs"})
    assert '<td data-v="s1"><a href="s1.png">s1</a></td>' in text  # in the predictions table
    assert '<a href="x.png">x.png</a>' in text  # a slide without a predictions row: listed
    assert "cannot read bad.svs" in text


def test_report_renders_whatever_metrics_it_is_given(runs):
    """Keys added to the metrics later (CI columns, new statistics) show without a change."""
    run, _ = runs
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["accuracy_ci"] = [0.25, 0.75]
    metrics["test"]["brier"] = 0.1234
    metrics["test"]["calibration"] = {"slope": 0.9, "intercept": -0.1}
    text = train_html(run, metrics, {"task": "n0_vs_n+"})
    assert "<th>accuracy_ci</th>" in text and "[0.250, 0.750]" in text
    assert "<th>brier</th>" in text and "0.123" in text
    assert ">calibration<" in text and "<th>slope</th>" in text


needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (make test-browser installs Debian's chromium as root)")


@pytest.mark.browser
@needs_chromium
def test_the_browser_harness_sees_errors_and_fetches(tmp_path):
    """The checks below can fail: a console error, an exception and a fetch are all seen."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.invalid/x.png">'
                    '<script>console.error("broken"); missing_function();</script></body></html>')
    with Browser(chromium()) as b:
        b.open(page)
        assert [m["type"] for m in b.console] == ["error"]
        assert len(b.exceptions) == 1
        assert any(u.startswith("https://") for u in b.requests)


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize("which", ["run", "cv"])
def test_report_in_chromium(runs, tmp_path, which):
    from PIL import Image

    folder = runs[0] if which == "run" else runs[1]
    with Browser(chromium()) as b:
        b.open(folder / "report.html")
        errors = [m for m in b.console if m.get("type") in ("error", "assert")]
        assert errors == [] and b.exceptions == []
        assert all(u.startswith(("file:", "data:")) for u in b.requests), b.requests
        assert b.evaluate("document.querySelectorAll('table').length") >= 4
        images = b.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
        assert images and all(w and w > 100 for w in images), images
        folds = json.loads((folder / "metrics.json").read_text()).get("per_fold", [])
        dots = sum(1 for r in folds for k in SPREAD_KEYS if r.get(k) is not None)
        assert b.evaluate("document.querySelectorAll('svg circle').length") == dots
        assert (dots > 0) == (which == "cv")
        column = "prob_N+"
        sort = f"""(() => {{
            const t = document.querySelector('table.predictions');
            const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent === '{column}');
            t.tHead.rows[0].cells[i].click();
            return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[i].textContent));
        }})()"""
        values = b.evaluate(sort)
        assert len(values) > 5 and values == sorted(values)
        assert b.evaluate(sort) == sorted(values, reverse=True)  # a second click: descending
        shot = b.screenshot(tmp_path / f"{which}.png")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 800 and pixels.std() > 20  # text, tables and figures, not blank
