"""The recipe's runs in the layout of Table 2 of Xu et al. (2021), beside the published numbers.

    python examples/bcnb/table2.py OUT/runs [--out OUT/table2.md] [--threshold roc|val|0.5]
        [--ci binomial|bootstrap|delong] [--clinical BCNB/clinical.xlsx] [--age-cutoff 50]

Reads `<runs>/<task>/<setting>/predictions.csv` (written by `balnmp-mil train`; settings
`clinical`, `image`, `image+clinical`) and prints three Markdown tables:

1. per experiment, model and cohort (training, validation, test): AUC [95 % CI], ACC, SENS,
   SPEC, PPV, NPV (in %, with 95 % CIs), each followed by the paper's row where published;
2. DeLong p-values between the three models on the patients they share, per cohort, beside
   the paper's (test cohort);
3. the test cohort split by age (< cut-off / >= cut-off; ages from the clinical table, by
   default the `labels` table of each run's `config.yaml`).

Operating point (`--threshold`): `roc` (default, the paper's): the Youden cut-off of each
cohort's own ROC; `val`: the Youden cut-off of the validation cohort's ROC applied to every
cohort; `0.5`. Multi-class experiments predict the argmax. Intervals (`--ci`, default the
paper's `binomial`): see `docs/evaluation.md`. Exit status 2 when no run is found.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import table2_published as published  # noqa: E402  (this folder, put on sys.path above)

from balnmp_mil.evaluation.metrics import (  # noqa: E402
    CI_METHODS,
    Report,
    evaluate,
    pairwise_delong,
    youden_threshold,
)

# (task, title in the paper)
EXPERIMENTS: tuple[tuple[str, str], ...] = (
    ("n0_vs_n+", "N0 vs N+"),
    ("n12_vs_n3", "N+(1-2) vs N+(>2)"),
    ("three_class", "N0 vs N+(1-2) vs N+(>2)"),
    ("n0_vs_n12", "N0 vs N+(1-2)"),
    ("n0_vs_n3", "N0 vs N+(>2)"),
)
# setting directory name -> the paper's model name. The clinical-only logistic regression is
# ours: the official repository has no code for it.
SETTINGS: tuple[tuple[str, str], ...] = (
    ("clinical", "Clinical data only"),
    ("image", "DL-CNB"),
    ("image+clinical", "DL-CNB+C"),
)
SPLITS: tuple[tuple[str, str], ...] = (("train", "Training"), ("val", "Validation"),
                                       ("test", "Test"))
THRESHOLDS = ("roc", "val", "0.5")
METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
COLUMNS = ("Experiment", "Model", "Cohort", "n (pos)", "AUC [95% CI]", "ACC (%)", "SENS (%)",
           "SPEC (%)", "PPV (%)", "NPV (%)", "Cut-off")


def _markdown(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _num(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * scale:.{digits}f}"


def _with_ci(value: float, ci, scale: float = 1.0, digits: int = 3) -> str:
    if not ci:
        return _num(value, scale, digits)
    return f"{_num(value, scale, digits)} [{_num(ci[0], scale, digits)}, " \
           f"{_num(ci[1], scale, digits)}]"


def load_runs(runs: str | Path) -> dict[tuple[str, str], pd.DataFrame]:
    """`predictions.csv` of every `<runs>/<task>/<setting>` found, in the paper's order."""
    found = {}
    for task, _ in EXPERIMENTS:
        for setting, _ in SETTINGS:
            path = Path(runs) / task / setting / "predictions.csv"
            if path.is_file():
                frame = pd.read_csv(path, dtype={"patient_id": str})
                missing = {"patient_id", "split", "label"} - set(frame.columns)
                if missing or not any(c.startswith("prob_") for c in frame.columns):
                    raise ValueError(f"{path}: not a balnmp-mil predictions.csv (needs "
                                     "patient_id, split, label, prob_<class>); rerun that run")
                found[(task, setting)] = frame
    return found


def scores(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): positive-class column for two classes, else all class columns."""
    probs = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy(float)
    return frame["label"].to_numpy(int), probs[:, -1] if probs.shape[1] == 2 else probs


def cohort_report(frame: pd.DataFrame, split: str, threshold: str, ci: str,
                  n_bootstrap: int = 1000) -> Report | None:
    """One cohort of one run at the chosen operating point (None if the run lacks it)."""
    part = frame[frame["split"] == split]
    if part.empty:
        return None
    y, s = scores(part)
    cut: float | str = 0.5
    source = None
    if s.ndim == 1 and threshold == "roc" and len(np.unique(y)) == 2:
        cut = "youden"
    elif s.ndim == 1 and threshold == "val":
        val = frame[frame["split"] == "val"]
        yv, sv = scores(val)
        if len(np.unique(yv)) == 2:
            cut, source = youden_threshold(yv, sv), "youden (val ROC)"
    return evaluate(y, s, threshold=cut, ci=ci, n_bootstrap=n_bootstrap,
                    threshold_source=source)


def _cutoff(rep: Report, wanted: str) -> str:
    if rep.threshold is None:
        return "argmax"
    note = ("" if rep.threshold_source != "fixed" or wanted == "0.5"
            else " (no ROC cut-off: one class)")
    return f"{rep.threshold:.3f}{note}"


def main_rows(runs: dict[tuple[str, str], pd.DataFrame], threshold: str, ci: str
              ) -> list[list[str]]:
    """Our rows, each followed by the paper's row for the same cohort where published."""
    rows: list[list[str]] = []
    titles, models = dict(EXPERIMENTS), dict(SETTINGS)
    for (task, setting), frame in runs.items():
        first = True
        for split, split_title in SPLITS:
            rep = cohort_report(frame, split, threshold, ci)
            if rep is None:
                continue
            head = [titles[task], models[setting]] if first else ["", ""]
            first = False
            rows.append([*head, split_title, f"{rep.n} ({rep.n_pos})",
                         _with_ci(rep.auc, rep.auc_ci),
                         *(_with_ci(getattr(rep, m), getattr(rep, f"{m}_ci"), 100, 2)
                           for m in METRICS), _cutoff(rep, threshold)])
            paper = published.ROWS.get((task, setting), {}).get(split)
            if paper:
                n = published.COHORT_SIZES[task][split]
                rows.append(["", "", f"{split_title} (paper)", str(n), *paper, "ROC"])
    return rows


def _p(value: float) -> str:
    return "—" if not math.isfinite(value) else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")


def delong_rows(runs: dict[tuple[str, str], pd.DataFrame]) -> list[list[str]]:
    """Pairwise DeLong tests between the models of each binary experiment, per cohort."""
    rows: list[list[str]] = []
    titles, models = dict(EXPERIMENTS), dict(SETTINGS)
    for task, title in titles.items():
        frames = {s: f for (t, s), f in runs.items() if t == task}
        if len(frames) < 2 or any(scores(f)[1].ndim != 1 for f in frames.values()):
            continue
        for split, split_title in SPLITS:
            parts = {s: f[f["split"] == split].set_index("patient_id") for s, f in frames.items()}
            common = sorted(set.intersection(*(set(p.index) for p in parts.values())))
            if not common:
                continue
            labels = {s: p.loc[common, "label"].to_numpy(int) for s, p in parts.items()}
            y = next(iter(labels.values()))
            if any(not np.array_equal(v, y) for v in labels.values()) or len(set(y)) < 2:
                continue
            tests = pairwise_delong(y, {s: scores(p.loc[common].reset_index())[1]
                                        for s, p in parts.items()})
            for (a, b), res in tests.items():
                paper = published.DELONG.get((task, a, b), "") if split == "test" else ""
                rows.append([title, split_title, f"{len(common)} ({int(y.sum())})",
                             f"{models[a]} vs {models[b]}", f"{res.auc1:.3f} vs {res.auc2:.3f}",
                             _p(res.p), paper])
    return rows


def ages_from_runs(runs_dir: Path, runs: dict[tuple[str, str], pd.DataFrame],
                   clinical: str | None) -> pd.Series | None:
    """Age per patient id, from `clinical` or the `labels` table of the runs' config.yaml."""
    import yaml

    from balnmp_mil.data.clinical_fields import patient_labels, resolve_columns
    from balnmp_mil.data.tables import read_table

    path = clinical
    for task, setting in runs if path is None else ():
        config = runs_dir / task / setting / "config.yaml"
        if config.is_file():
            path = (yaml.safe_load(config.read_text()) or {}).get("labels") or path
    if path is None or not Path(path).is_file():
        return None
    table = read_table(path, "clinical table")
    cols = resolve_columns(table, required=False)
    if "age" not in cols:
        return None
    return pd.Series(pd.to_numeric(table[cols["age"]], errors="coerce").to_numpy(float),
                     index=patient_labels(table))


def subgroup_rows(runs: dict[tuple[str, str], pd.DataFrame], ages: pd.Series, cutoff: float,
                  ci: str) -> list[list[str]]:
    """Test-cohort AUC [95 % CI] of each model below / at or above the age cut-off."""
    rows = []
    titles, models = dict(EXPERIMENTS), dict(SETTINGS)
    for (task, setting), frame in runs.items():
        test = frame[frame["split"] == "test"]
        age = ages.reindex(test["patient_id"]).to_numpy(float)
        for name, mask in ((f"age < {cutoff:g}", age < cutoff),
                           (f"age ≥ {cutoff:g}", age >= cutoff)):
            if not mask.any():
                continue
            y, s = scores(test[mask])
            rep = evaluate(y, s, ci=ci)
            paper = published.SUBGROUPS.get((task, setting, name), "")
            rows.append([titles[task], models[setting], name, f"{rep.n} ({rep.n_pos})",
                         _with_ci(rep.auc, rep.auc_ci), paper])
    return rows


def render(runs_dir: str | Path, threshold: str = "roc", ci: str = "binomial",
           clinical: str | None = None, age_cutoff: float = 50.0) -> str | None:
    """The three tables as Markdown (None when no run is found)."""
    runs = load_runs(runs_dir)
    if not runs:
        return None
    where = {"roc": "the cut-off of each cohort's own ROC (Youden), as the paper",
             "val": "the Youden cut-off of the validation cohort's ROC",
             "0.5": "the threshold 0.5"}[threshold]
    parts = [_markdown(COLUMNS, main_rows(runs, threshold, ci)),
             f"\nThreshold metrics at {where}; AUC 95% CI: {ci}; ACC/SENS/SPEC Clopper–Pearson, "
             f"PPV/NPV logit. Paper rows: {published.SOURCE}.\n"]
    delong = delong_rows(runs)
    if delong:
        parts += ["\n## DeLong tests between the models\n",
                  _markdown(("Experiment", "Cohort", "n (pos)", "Models", "AUCs", "p", "Paper p"),
                            delong)]
    ages = ages_from_runs(Path(runs_dir), runs, clinical)
    groups = subgroup_rows(runs, ages, age_cutoff, ci) if ages is not None else []
    if groups:
        parts += ["\n## Test cohort by age\n",
                  _markdown(("Experiment", "Model", "Subgroup", "n (pos)", "AUC [95% CI]",
                             "Paper AUC"), groups)]
    elif ages is None:
        parts.append("\nNo age subgroups: no readable table with an age column (pass "
                     "--clinical BCNB/patient-clinical-data.xlsx).\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Table-2-style summary of the BCNB runs.")
    parser.add_argument("runs", help="folder holding <task>/<setting>/predictions.csv")
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    parser.add_argument("--threshold", choices=THRESHOLDS, default="roc",
                        help="operating point: each cohort's own ROC cut-off (the paper's), "
                             "the validation ROC's cut-off, or 0.5")
    parser.add_argument("--ci", choices=list(CI_METHODS.names()), default="binomial",
                        help="AUC interval (binomial: the paper's)")
    parser.add_argument("--clinical", help="table with the patients' ages (default: each "
                                           "run's labels table)")
    parser.add_argument("--age-cutoff", type=float, default=50.0)
    args = parser.parse_args(argv)
    text = render(args.runs, args.threshold, args.ci, args.clinical, args.age_cutoff)
    if text is None:
        print(f"error: no <task>/<setting>/predictions.csv under {args.runs}; run "
              "examples/bcnb/run_recipe.py first", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
