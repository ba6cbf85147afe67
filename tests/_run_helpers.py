"""Fixtures for the workflow / CLI tests: a tiny random-feature store and BCNB-style tables.

N+ patients carry a planted signal in a few of their instances (first feature dims shifted), so
an attention model can learn the task in a few epochs; clinical columns carry a weak signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DIM = 16
STATUSES = ("N0", "N+(1-2)", "N+(>2)")


@dataclass
class TinyCohort:
    features: Path
    labels: Path
    table: pd.DataFrame


def write_store(out: Path, slides: dict[str, np.ndarray], patch_size_level0: int = 448) -> Path:
    """A per-slide HDF5 store (DESIGN.md format) written with FeatureStore's writer."""
    from balnmp_cache.store import FeatureStore

    attrs = {"encoder": "random", "weights": "none", "feature_dim": DIM, "patch_size": 224,
             "patch_size_level0": patch_size_level0, "target_mpp": 0.5, "slide_mpp": 0.25,
             "level": 0, "tissue": "biopsy", "annotations": "none"}
    with FeatureStore(out, mode="a", format="h5") as store:
        for sid, feats in slides.items():
            rng = np.random.default_rng(len(feats))
            grid = rng.permutation(64)[: len(feats)]
            coords = np.stack([grid % 8, grid // 8], axis=1).astype(np.int64) * patch_size_level0
            with store.writer(sid, DIM, "float32", attrs={**attrs, "slide_id": sid},
                              coords_attrs={"patch_size": 224,
                                            "patch_size_level0": patch_size_level0}) as w:
                w.append(feats.astype(np.float32), coords)
    return out


def make_tiny_cohort(root: Path, n_patients: int = 30, seed: int = 0,
                     signal: float = 2.0) -> TinyCohort:
    """`root/features` (one slide per patient, id = patient id) and `root/clinical.csv`."""
    rng = np.random.default_rng(seed)
    status = np.array([STATUSES[i % 3] for i in range(n_patients)])
    rng.shuffle(status)
    slides = {}
    for pid in range(1, n_patients + 1):
        n = int(rng.integers(6, 20))
        x = rng.normal(size=(n, DIM))
        if status[pid - 1] != "N0":
            k = max(1, n // 4)
            x[:k, :4] += signal
        slides[str(pid)] = x
    positive = status != "N0"
    table = pd.DataFrame({
        "Patient ID": np.arange(1, n_patients + 1),
        "Age(years)": rng.integers(30, 80, n_patients),
        "Tumour Size(cm)": np.round(rng.uniform(0.5, 5, n_patients) + positive, 1),
        "Tumour Type": rng.choice(["Invasive ductal carcinomas", "Other type"], n_patients),
        "ER": rng.choice(["Positive", "Negative"], n_patients),
        "PR": rng.choice(["Positive", "Negative"], n_patients),
        "HER2": rng.choice(["Positive", "Negative"], n_patients),
        "HER2 Expression": rng.choice(["0", "1+", "2+", "3+"], n_patients),
        "Histological grading": rng.choice(["1", "2", "3"], n_patients),
        "Surgical": rng.choice(["Breast-conserving surgery", "Modified Radical Mastectomy"],
                               n_patients),
        "Ki67": rng.integers(1, 90, n_patients),
        "Molecular subtype": rng.choice(["Luminal A", "Luminal B", "Triple negative"],
                                        n_patients),
        "Number of lymph node metastases": np.where(positive, 2, 0),
        "ALN status": status,
    })
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "clinical.csv"
    table.to_csv(labels, index=False)
    features = write_store(root / "features", slides)
    return TinyCohort(features, labels, table)


def fast_args(epochs: int = 3) -> list[str]:
    """CLI options that keep a test run to a second or two on 2 CPU cores."""
    return ["--epochs", str(epochs), "--device", "cpu", "--n-bootstrap", "50",
            "--model-arg", "embed_dim=16", "--model-arg", "attention_dim=8"]
