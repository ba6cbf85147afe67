"""Tiny generated inputs for the examples, so each runs in seconds without any download.

`write_example_cohort(out)` writes random patch embeddings for N patients with a planted
signal (N+ patients carry a few instances shifted along one direction, the MIL setting) and a
BCNB-style clinical table (`Patient ID`, `ALN status`, age, tumour size, ER, PR, HER2, ...):

    out/features/<patient>.h5          balnmp per-slide store (layout="balnmp")
    out/clam/h5_files/<patient>.h5     or a CLAM cache: datasets `features`, `coords` (layout="clam")
    out/clinical.csv                   the clinical table, also usable as the labels file
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from balnmp_cache.store import FeatureStore
from balnmp_cache.synthetic.clinical import make_clinical_table


@dataclass
class ExampleCohort:
    """Where the generated inputs are."""

    features: Path
    clinical_csv: Path
    n_patients: int


def write_example_cohort(out: str | Path, n_patients: int = 40, dim: int = 64, seed: int = 0,
                         layout: str = "balnmp") -> ExampleCohort:
    """Write `n_patients` bags of `dim`-d embeddings and their clinical table under `out`."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    statuses = list(rng.choice(["N0", "N0", "N+(1-2)", "N+(>2)"], size=n_patients))
    statuses[:3] = ["N0", "N+(1-2)", "N+(>2)"]  # every class present even in tiny cohorts
    table = make_clinical_table(rng, statuses)
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    bags = {}
    for pid, status in zip(table["Patient ID"], statuses):
        n = int(rng.integers(8, 24))
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        if status != "N0":  # a minority of "metastasis-like" instances carries the signal
            k = max(2, n // 3)
            feats[:k] += 3.0 * direction
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
        bags[str(pid)] = (feats, coords)
    if layout == "balnmp":
        features = out / "features"
        store = FeatureStore(features, mode="a", format="h5")
        for sid, (feats, coords) in bags.items():
            with store.writer(sid, feature_dim=dim, dtype="float32",
                              attrs={"encoder": "example", "target_mpp": 0.5},
                              coords_attrs={"patch_size": 256}) as w:
                w.append(feats, coords)
    elif layout == "clam":  # what CLAM's extract_features_fp.py leaves in h5_files/
        features = out / "clam"
        (features / "h5_files").mkdir(parents=True, exist_ok=True)
        for sid, (feats, coords) in bags.items():
            with h5py.File(features / "h5_files" / f"{sid}.h5", "w") as f:
                # float32 features, int32 coords, chunks of 32 rows, resizable, no attributes
                for key, a in (("features", feats), ("coords", coords.astype(np.int32))):
                    d = f.create_dataset(key, shape=a.shape, maxshape=(None, *a.shape[1:]),
                                         chunks=(32, *a.shape[1:]), dtype=a.dtype)
                    d[:] = a
    else:
        raise ValueError(f"layout must be 'balnmp' or 'clam', not {layout!r}")
    clinical_csv = out / "clinical.csv"
    table.to_csv(clinical_csv, index=False)
    return ExampleCohort(features=features, clinical_csv=clinical_csv, n_patients=n_patients)
