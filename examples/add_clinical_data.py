"""Add clinical covariates to an image MIL model (the paper's DL-CNB+C), with the library.

    python examples/add_clinical_data.py FEATURES --clinical patient-clinical-data.xlsx \
        [--task n0_vs_n+] [--variant paper5|full] [--epochs 50] [--device cuda]

Trains on one stratified patient split, and prints the test AUC of:
  image only             MIL on the patch embeddings            (DL-CNB)
  image + clinical       the same, clinical vector joined after pooling   (DL-CNB+C)
  clinical only          logistic regression on the clinical vector
The clinical encoder (standardisation, one-hot categories) is fitted on the TRAINING patients
only and then applied to everyone: fitting it on all patients would leak test information.
Without FEATURES, a tiny generated cohort (random embeddings + BCNB-style table) is used:

    python examples/add_clinical_data.py --epochs 20

The command-line equivalent is `balnmp-mil train FEATURES --labels T --clinical T ...`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from balnmp_mil import build_model, evaluate, fit, load_cohort, predict  # noqa: E402
from balnmp_mil.data import ClinicalEncoder  # noqa: E402
from balnmp_mil.data.splits import stratified_split  # noqa: E402
from balnmp_mil.training.baseline import fit_clinical_baseline  # noqa: E402


def compare_settings(features: str | Path, clinical: str | Path, task: str, variant: str,
                     epochs: int, device: str, seed: int = 0) -> dict[str, float | None]:
    """Test AUC of image-only, image+clinical and clinical-only on the same patients."""
    # `clinical=` keeps the raw clinical rows in cohort.clinical_table (indexed by patient id).
    cohort = load_cohort(features, labels=clinical, clinical=clinical, task=task, device=device)
    y = cohort.labels.cpu().numpy()
    idx = stratified_split(cohort.patient_ids, y, val=0.2, test=0.25, seed=seed).indices(
        cohort.patient_ids)
    ids = {part: [cohort.patient_ids[i] for i in rows] for part, rows in idx.items()}

    # Fit the encoder on the training patients, transform everybody.
    encoder = ClinicalEncoder(variant=variant).fit(cohort.clinical_table.loc[ids["train"]])
    matrix = encoder.transform(cohort.clinical_table.loc[cohort.patient_ids])
    print(f"clinical vector: {matrix.shape[1]} values ({', '.join(encoder.feature_names[:6])}"
          f"{', ...' if len(encoder.feature_names) > 6 else ''})")

    aucs: dict[str, float | None] = {}
    for name, data, clinical_dim in (("image only", cohort, 0),
                                     ("image + clinical", cohort.with_clinical(matrix),
                                      matrix.shape[1])):
        model = build_model("abmil", in_dim=data.feature_dim, n_classes=data.n_classes,
                            clinical_dim=clinical_dim)
        run = fit(model, data.subset(idx["train"]), val=data.subset(idx["val"]), epochs=epochs,
                  seed=seed, device=device)
        probs = predict(run.model, data.subset(idx["test"]))
        aucs[name] = _test_auc(y[idx["test"]], probs, cohort.class_names, seed)

    baseline = fit_clinical_baseline(matrix[idx["train"]], y[idx["train"]], seed=seed)
    aucs["clinical only"] = _test_auc(y[idx["test"]],
                                      baseline.predict_proba(matrix[idx["test"]]),
                                      cohort.class_names, seed)
    for name, auc in aucs.items():
        print(f"  {name:<17} test AUC {'n/a' if auc is None else f'{auc:.3f}'}")
    return aucs


def _test_auc(y: np.ndarray, probs: np.ndarray, class_names: list[str], seed: int
              ) -> float | None:
    scores = probs[:, 1] if probs.shape[1] == 2 else probs
    return evaluate(y, scores, n_bootstrap=100, seed=seed, class_names=class_names).auc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Image-only vs image + clinical vs clinical-only.")
    p.add_argument("features", nargs="?", help="feature store (default: generated)")
    p.add_argument("--clinical", help="BCNB-style clinical table, also the labels (CSV/XLSX)")
    p.add_argument("--task", default="n0_vs_n+")
    p.add_argument("--variant", default="paper5", choices=("paper5", "full"),
                   help="paper5: the paper's five features; full: every BCNB column")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.features and not args.clinical:
        p.error("--clinical is required with FEATURES")
    with tempfile.TemporaryDirectory(prefix="balnmp-clinical-") as tmp:
        features, clinical = args.features, args.clinical
        if features is None:
            from _example_data import write_example_cohort

            made = write_example_cohort(tmp, n_patients=40, seed=args.seed)
            features, clinical = made.features, made.clinical_csv
        compare_settings(features, clinical, args.task, args.variant, args.epochs, args.device,
                         args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
