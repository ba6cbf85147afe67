"""Compare MIL models on the same test patients with DeLong's paired test for AUCs.

    python examples/compare_models_delong.py FEATURES --labels T [--task n0_vs_n+] \
        [--models abmil,mean] [--epochs 50] [--device cuda]

Every model is trained on the SAME stratified patient split (same seed), so their test scores
are paired and DeLong's test applies: it accounts for the correlation between two AUCs measured
on the same patients (an unpaired comparison of two confidence intervals would not). Without
FEATURES, a tiny generated cohort (random embeddings with a planted signal) is used:

    python examples/compare_models_delong.py --epochs 20

For two finished run directories, the same test is one call on their predictions.csv (same
patients via `--splits`): `delong_test(y, run_a_scores, run_b_scores)`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from balnmp_mil import build_model, fit, load_cohort, predict  # noqa: E402
from balnmp_mil.data.splits import stratified_split  # noqa: E402
from balnmp_mil.evaluation.delong import auc_score, delong_ci, pairwise_delong  # noqa: E402


def compare(features: str | Path, labels: str | Path, task: str, models: list[str],
            epochs: int, device: str, seed: int = 0) -> dict[tuple[str, str], float]:
    """Train each model on one split; print test AUCs (DeLong CI) and pairwise p-values."""
    cohort = load_cohort(features, labels=labels, task=task, device=device)
    if cohort.n_classes != 2:
        raise SystemExit(f"error: DeLong's test compares binary AUCs; task {task!r} has "
                         f"{cohort.n_classes} classes (choose a binary task)")
    y = cohort.labels.cpu().numpy()
    idx = stratified_split(cohort.patient_ids, y, val=0.2, test=0.3, seed=seed).indices(
        cohort.patient_ids)
    train, val, test = (cohort.subset(idx[p]) for p in ("train", "val", "test"))
    y_test = y[idx["test"]]

    scores: dict[str, np.ndarray] = {}
    for name in models:
        model = build_model(name, in_dim=cohort.feature_dim, n_classes=2)
        run = fit(model, train, val=val, epochs=epochs, seed=seed, device=device)
        scores[name] = predict(run.model, test)[:, 1]  # positive-class probability
        lo, hi = delong_ci(y_test, scores[name])
        print(f"{name:<8} test AUC {auc_score(y_test, scores[name]):.3f} "
              f"[DeLong 95% CI {lo:.3f}, {hi:.3f}] (n={len(y_test)})")

    p_values = {}
    for (a, b), res in pairwise_delong(y_test, scores).items():
        print(f"{a} vs {b}: AUC {res.auc1:.3f} vs {res.auc2:.3f}, z = {res.z:.2f}, "
              f"p = {res.p:.3f}")
        p_values[(a, b)] = res.p
    return p_values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Paired DeLong comparison of MIL models.")
    p.add_argument("features", nargs="?", help="feature store (default: generated)")
    p.add_argument("--labels", help="labels CSV/XLSX (required with FEATURES)")
    p.add_argument("--task", default="n0_vs_n+")
    p.add_argument("--models", default="abmil,mean", help="comma-separated registered models")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.features and not args.labels:
        p.error("--labels is required with FEATURES")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) < 2:
        p.error("--models needs at least two model names")
    with tempfile.TemporaryDirectory(prefix="balnmp-delong-") as tmp:
        features, labels = args.features, args.labels
        if features is None:
            from _example_data import write_example_cohort

            made = write_example_cohort(tmp, n_patients=48, seed=args.seed)
            features, labels = made.features, made.clinical_csv
        compare(features, labels, args.task, models, args.epochs, args.device, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
