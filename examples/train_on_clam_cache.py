"""Train an attention-MIL model on features someone already extracted with CLAM or TRIDENT.

    python examples/train_on_clam_cache.py CACHE --labels labels.csv [--task n0_vs_n+] \
        [--model abmil] [--epochs 50] [--device cuda]

CACHE is read as it is (no conversion): a CLAM output folder (`h5_files/<slide>.h5` and/or
`pt_files/<slide>.pt`), a TRIDENT job / features folder, or a balnmp store. The labels table
has `patient_id` (or `slide_id`, or BCNB's `Patient ID`) and `label` (or `ALN status` with
--task). Without CACHE, a tiny CLAM-layout cache with a planted signal is written first:

    python examples/train_on_clam_cache.py --epochs 20

Library calls shown: FeatureStore (format inferred), load_cohort, stratified_split,
build_model, fit (early stopping on val), predict, evaluate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from balnmp_cache import FeatureStore  # noqa: E402
from balnmp_mil import build_model, evaluate, fit, load_cohort, predict  # noqa: E402
from balnmp_mil.data.splits import stratified_split  # noqa: E402


def train_and_report(cache: str | Path, labels: str | Path, task: str | None, model_name: str,
                     epochs: int, device: str, seed: int = 0) -> float | None:
    """Split patients, train, print the test report; returns the test AUC."""
    store = FeatureStore(cache)  # the layout (clam / trident / h5 / zarr / pack) is inferred
    print(f"{cache}: {store.format} cache of {len(store)} slides")

    # Bags of every labelled patient, packed end to end on the device (no padding).
    cohort = load_cohort(cache, labels=labels, task=task, device=device)
    print(f"{len(cohort)} patients, {cohort.n_bags} bags, {cohort.feature_dim}-d features, "
          f"classes {cohort.class_names}")

    # A stratified patient-level split: nobody is in two parts.
    split = stratified_split(cohort.patient_ids, cohort.labels.cpu().numpy(), val=0.2,
                             test=0.25, seed=seed)
    idx = split.indices(cohort.patient_ids)

    model = build_model(model_name, in_dim=cohort.feature_dim, n_classes=cohort.n_classes)
    run = fit(model, cohort.subset(idx["train"]), val=cohort.subset(idx["val"]), epochs=epochs,
              seed=seed, device=device)
    print(f"best epoch {run.best_epoch} (validation {run.config.monitor} = {run.best_score})")

    test = cohort.subset(idx["test"])
    probs = predict(run.model, test)  # (n_patients, n_classes) probabilities
    scores = probs[:, 1] if cohort.n_classes == 2 else probs
    report = evaluate(test.labels.cpu().numpy(), scores, n_bootstrap=200, seed=seed,
                      class_names=cohort.class_names)
    auc, (lo, hi) = report.auc, report.auc_ci
    if auc is None:  # one class only among the test patients
        print(f"test AUC undefined (n={report.n}, one class); use more patients")
    else:
        print(f"test AUC {auc:.3f} [{lo:.3f}, {hi:.3f}], accuracy {report.accuracy:.3f} "
              f"(n={report.n})")
    return report.auc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train MIL on an existing CLAM/TRIDENT cache.")
    p.add_argument("cache", nargs="?", help="CLAM/TRIDENT/balnmp feature folder "
                                            "(default: write a tiny CLAM cache)")
    p.add_argument("--labels", help="labels CSV/XLSX (required with CACHE)")
    p.add_argument("--task", default=None, help="ALN task, e.g. n0_vs_n+ (default: `label`)")
    p.add_argument("--model", default="abmil")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cache and not args.labels:
        p.error("--labels is required with CACHE")

    with tempfile.TemporaryDirectory(prefix="balnmp-clam-") as tmp:
        cache, labels, task = args.cache, args.labels, args.task
        if cache is None:
            from _example_data import write_example_cohort

            made = write_example_cohort(tmp, n_patients=40, layout="clam", seed=args.seed)
            cache, labels, task = made.features, made.clinical_csv, task or "n0_vs_n+"
        train_and_report(cache, labels, task, args.model, args.epochs, args.device, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
