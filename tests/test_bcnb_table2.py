"""examples/bcnb/table2.py on synthetic run outputs, and the published numbers it prints.

The published rows are checked against themselves: every printed interval must follow from
the printed value and the cohort size by the paper's rules (`evaluation/intervals.py`), and
the confusion counts behind ACC/SENS/SPEC/PPV/NPV must exist. A mistyped digit fails.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from _docs_helpers import ROOT, import_script

from balnmp_mil.evaluation.intervals import binomial_auc_ci, count_cis
from balnmp_mil.evaluation.metrics import delong_test, evaluate, youden_threshold

table2 = import_script(ROOT / "examples" / "bcnb" / "table2.py")
published = table2.published
KNOWN_SLIP = ("n0_vs_n+", "image+clinical", "train")  # AUC CI copied from another row


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", cell)]


def _counts(n: int, acc: float, sens: float, spec: float, ppv: float, npv: float):
    """The (TP, FP, FN, TN) whose rounded percentages are the printed ones, or None."""
    for n1 in range(1, n):
        n0 = n - n1
        tp, tn = round(sens / 100 * n1), round(spec / 100 * n0)
        fp, fn = n0 - tn, n1 - tp
        got = [(tp + tn) / n, tp / n1, tn / n0, tp / max(tp + fp, 1), tn / max(tn + fn, 1)]
        if all(abs(100 * g - v) < 0.0051 for g, v in zip(got, (acc, sens, spec, ppv, npv))):
            return tp, fp, fn, tn
    return None


@pytest.mark.parametrize("key", [(t, s, c) for (t, s), rows in published.ROWS.items()
                                 for c in rows])
def test_published_rows_follow_the_papers_interval_rules(key):
    task, setting, cohort = key
    row, n = published.ROWS[(task, setting)][cohort], published.COHORT_SIZES[task][cohort]
    auc, *auc_ci = _numbers(row[0])
    if key != KNOWN_SLIP:  # the printed AUC is rounded: its interval may differ by 0.001
        assert np.allclose(binomial_auc_ci(auc, n), auc_ci, atol=0.0015)
    values = [_numbers(cell) for cell in row[1:]]
    counts = _counts(n, *(v[0] for v in values))
    assert counts is not None, "no confusion counts give these percentages"
    cis = count_cis(*counts)
    keys = ("accuracy_ci", "sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci")
    for k, v in zip(keys, values):
        assert np.allclose(np.multiply(cis[k], 100), v[1:], atol=0.0051), k


def _write_runs(root, tasks=("n0_vs_n+",), n=60, seed=0):
    """predictions.csv (and config.yaml naming an age table) as `balnmp-mil train` writes."""
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(1, n + 1)]
    y = np.array([i % 2 for i in range(n)])
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    ages = pd.DataFrame({"Patient ID": ids, "Age(years)": rng.integers(30, 75, n)})
    ages.to_csv(root / "clinical.csv", index=False)
    signal = {"clinical": 0.15, "image": 0.4, "image+clinical": 0.45}
    frames = {}
    for task in tasks:
        for setting, strength in signal.items():
            p = np.clip(rng.random(n) * 0.6 + strength * y + 0.1 * (1 - y), 0, 1)
            frame = pd.DataFrame({"patient_id": ids, "split": split, "label": y,
                                  "prob_N0": 1 - p, "prob_N+": p})
            run = root / "runs" / task / setting
            run.mkdir(parents=True)
            frame.to_csv(run / "predictions.csv", index=False)
            (run / "config.yaml").write_text(yaml.safe_dump({"labels": str(root / "clinical.csv")}))
            frames[(task, setting)] = frame
    return frames, ages


def test_table2_rows_at_each_cohorts_own_roc_cutoff_beside_the_paper(tmp_path, capsys):
    frames, _ = _write_runs(tmp_path)
    assert table2.main([str(tmp_path / "runs"), "--out", str(tmp_path / "t.md")]) == 0
    text = capsys.readouterr().out
    assert text == (tmp_path / "t.md").read_text()
    lines = text.splitlines()
    assert lines[0] == ("| Experiment | Model | Cohort | n (pos) | AUC [95% CI] | ACC (%) | "
                        "SENS (%) | SPEC (%) | PPV (%) | NPV (%) | Cut-off |")
    test = frames[("n0_vs_n+", "image")].query("split == 'test'")
    y, s = test["label"].to_numpy(), test["prob_N+"].to_numpy()
    rep = evaluate(y, s, threshold=youden_threshold(y, s), ci="binomial")
    lo, hi = rep.auc_ci
    acc = f"{100 * rep.accuracy:.2f} [{100 * rep.accuracy_ci[0]:.2f}, {100 * rep.accuracy_ci[1]:.2f}]"
    ours = f"|  |  | Test | {rep.n} ({rep.n_pos}) | {rep.auc:.3f} [{lo:.3f}, {hi:.3f}] | {acc} |"
    assert any(line.startswith(ours) and line.endswith(f"| {rep.threshold:.3f} |")
               for line in lines)
    assert ("|  |  | Test (paper) | 218 | 0.816 [0.758, 0.865] | 74.77 [68.46, 80.39] | "
            "80.95 [70.92, 88.70] | 70.90 [62.43, 78.42] | 63.55 [56.76, 69.84] | "
            "85.59 [79.04, 90.34] | ROC |") in lines
    assert "cut-off of each cohort's own ROC (Youden), as the paper" in text
    assert "| N0 vs N+ | Clinical data only | Training |" in text


def test_table2_delong_and_age_subgroups(tmp_path, capsys):
    frames, ages = _write_runs(tmp_path)
    assert table2.main([str(tmp_path / "runs"), "--threshold", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "Threshold metrics at the threshold 0.5" in text
    a, b = (frames[("n0_vs_n+", k)].query("split == 'test'") for k in ("image", "image+clinical"))
    res = delong_test(a["label"].to_numpy(), a["prob_N+"].to_numpy(), b["prob_N+"].to_numpy())
    p = "< 0.0001" if res.p < 1e-4 else f"{res.p:.4f}"
    assert (f"| N0 vs N+ | Test | {len(a)} ({a['label'].sum()}) | DL-CNB vs DL-CNB+C | "
            f"{res.auc1:.3f} vs {res.auc2:.3f} | {p} | 0.4532 |") in text
    assert "## Test cohort by age" in text
    test = frames[("n0_vs_n+", "image+clinical")].query("split == 'test'")
    young = test["patient_id"].isin(ages.loc[ages["Age(years)"] < 50, "Patient ID"]).to_numpy()
    rep = evaluate(test["label"].to_numpy()[young], test["prob_N+"].to_numpy()[young],
                   ci="binomial")
    assert (f"| N0 vs N+ | DL-CNB+C | age < 50 | {rep.n} ({rep.n_pos}) | {rep.auc:.3f} "
            f"[{rep.auc_ci[0]:.3f}, {rep.auc_ci[1]:.3f}] | 0.918 [0.825, 0.971] |") in text
    assert "| age ≥ 50 |" in text


def test_table2_val_cutoff_and_missing_runs(tmp_path, capsys):
    assert table2.main([str(tmp_path)]) == 2
    assert "no <task>/<setting>/predictions.csv" in capsys.readouterr().err
    frames, _ = _write_runs(tmp_path)
    assert table2.main([str(tmp_path / "runs"), "--threshold", "val", "--ci", "delong"]) == 0
    text = capsys.readouterr().out
    val = frames[("n0_vs_n+", "clinical")].query("split == 'val'")
    cut = youden_threshold(val["label"], val["prob_N+"])
    assert f"| {cut:.3f} |" in text and "validation cohort's ROC" in text


def test_table2_without_an_age_table_says_how_to_get_the_subgroups(tmp_path, capsys):
    _write_runs(tmp_path)
    (tmp_path / "clinical.csv").unlink()
    assert table2.main([str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "## Test cohort by age" not in text and "pass --clinical" in text
