"""Test data the tests make themselves: feature stores, bags with a planted signal, BCNB tables.

The one home of random test data (fixtures shared by several test modules live in
`conftest.py`):

- `write_store`: a feature store written with `FeatureStore`'s own writer, random bags or
  given features, random or grid coordinates, optionally each row's patch file name;
- `planted_bags` / `planted_cohort`: MIL bags whose positive label plants a few shifted
  instances, so a model learns in a few epochs;
- `bcnb_table`: a clinical table with BCNB's column names and value spellings;
- `make_tiny_cohort`: a store plus its BCNB table, for the `balnmp-mil` command-line tests;
- `clam_*` / `trident_*`: the files CLAM (53e2409) and TRIDENT (a91fa84) write, byte for byte
  (the same open/append pattern, chunks, dtypes and attribute types as their writers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from balnmp_mil.data.cohort import Cohort

ALN_STATUSES = ("N0", "N+(1-2)", "N+(>2)")

STORE_ATTRS = {
    "source_path": "/slides/x.svs", "encoder": "resnet50", "weights": "imagenet",
    "patch_size": 224, "patch_size_level0": 448, "target_mpp": 0.5, "slide_mpp": 0.25,
    "level": 0, "tissue": "biopsy", "annotations": None,
}  # fmt: skip
COORDS_ATTRS = {"patch_size": 224, "patch_size_level0": 448, "level0_magnification": 40,
                "target_magnification": 20.0}  # fmt: skip


# --------------------------------------------------------------------------- feature stores
def make_bag(rng: np.random.Generator, n: int, dim: int,
             dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Random features (n, dim) and random level-0 coordinates (n, 2)."""
    feats = rng.normal(size=(n, dim)).astype(dtype)
    coords = rng.integers(0, 100_000, size=(n, 2)).astype(np.int64)
    return feats, coords


def write_store(
    path: Path,
    bags: Mapping[str, int | np.ndarray],
    dim: int = 16,
    dtype: str = "float16",
    format: str | None = None,
    seed: int = 0,
    attrs: dict[str, Any] | None = None,
    batch: int = 7,
    grid: int | None = None,
    patch_files: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write slides `{id: n_patches or (n, D) features}` in batches of `batch` rows with
    `FeatureStore`'s writer; returns the exact arrays written, by slide id.

    `grid`: coordinates are distinct cells of an 8 x 8 grid of `grid`-px patches (what a
    heatmap draws on) and `patch_size_level0` says so; else random level-0 positions.
    `patch_files`: `{id: one name per row}`, each row's source file name, appended with its
    rows as extraction from a folder of patches does; slides not in it record no names.
    """
    from balnmp_cache.store import FeatureStore

    rng = np.random.default_rng(seed)
    attrs = {**STORE_ATTRS, **(attrs or {})}
    coords_attrs = dict(COORDS_ATTRS)
    if grid is not None:
        attrs["patch_size_level0"] = coords_attrs["patch_size_level0"] = grid
    written = {}
    with FeatureStore(path, mode="a", format=format) as store:
        for sid, bag in bags.items():
            if isinstance(bag, np.ndarray):
                feats = bag.astype(dtype)
                coords = rng.integers(0, 100_000, size=(len(bag), 2)).astype(np.int64)
            else:
                feats, coords = make_bag(rng, bag, dim, dtype)
            if grid is not None:
                cells = rng.permutation(64)[: len(feats)]
                coords = np.stack([cells % 8, cells // 8], axis=1).astype(np.int64) * grid
            with store.writer(sid, feats.shape[1], dtype=dtype, attrs=dict(attrs),
                              coords_attrs=coords_attrs) as w:  # fmt: skip
                names = None if patch_files is None else patch_files.get(sid)
                for a in range(0, len(feats), batch):
                    w.append(feats[a : a + batch], coords[a : a + batch],
                             None if names is None else list(names[a : a + batch]))
            written[sid] = (feats, coords)
    return written


# ------------------------------------------------------------------------------- MIL bags
def planted_bags(
    n_bags: int = 40, dim: int = 8, seed: int = 0, n_classes: int = 2, lo: int = 3, hi: int = 20
) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags whose label c > 0 plants a few instances shifted along feature c."""
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for i in range(n_bags):
        y = i % n_classes
        x = rng.normal(size=(int(rng.integers(lo, hi)), dim)).astype(np.float32)
        if y:
            x[: max(1, len(x) // 4), y - 1] += 2.5
        bags.append(x)
        labels.append(y)
    return bags, np.array(labels)


def planted_cohort(**kw: Any) -> Cohort:
    """`planted_bags` as a `Cohort` (in memory, one bag per patient)."""
    from balnmp_mil.data.cohort import cohort_from_bags

    bags, labels = planted_bags(**kw)
    return cohort_from_bags(bags, labels)


# ---------------------------------------------------------------------------- BCNB tables
def _cycle(values: Sequence[Any], n: int) -> list[Any]:
    return [values[i % len(values)] for i in range(n)]


def bcnb_table(status: Sequence[str] | int = 8, seed: int = 0,
               size_signal: float = 0.0) -> pd.DataFrame:  # fmt: skip
    """A clinical table with BCNB's columns and spellings for patients 1..n.

    `status`: each patient's `ALN status` (any spelling, to test label parsing), or a patient
    count (statuses cycle N0, N+(1-2), N+(>2)). Categorical columns cycle through their values,
    so every value appears in any 4 consecutive patients; HER2 is positive for the last patient
    only. `size_signal` cm are added to the tumour size of N+ patients (a weak clinical signal).
    """
    status = _cycle(ALN_STATUSES, status) if isinstance(status, int) else list(status)
    n = len(status)
    rng = np.random.default_rng(seed)
    positive = np.array([str(s).strip().upper() != "N0" for s in status])
    return pd.DataFrame({
        "Patient ID": np.arange(1, n + 1),
        "Age(years)": rng.integers(30, 80, n),
        "Tumour Size(cm)": np.round(rng.uniform(0.5, 5, n) + size_signal * positive, 1),
        "Tumour Type": _cycle(["Invasive ductal carcinoma", "Invasive lobular carcinoma"], n),
        "ER": _cycle(["Positive", "Negative"], n),
        "PR": _cycle(["Negative", "Positive", "Positive", "Negative"], n),
        "HER2": ["Negative"] * (n - 1) + ["Positive"],
        "HER2 Expression": _cycle(["0", "1+", "2+", "3+"], n),
        "Histological grading": _cycle([1, 2, 3, 2], n),
        "Surgical": _cycle(["Breast-conserving surgery", "Modified radical mastectomy"], n),
        "Ki67": [f"{v}%" for v in rng.integers(5, 60, n)],
        "Molecular subtype": _cycle(["Luminal A", "Luminal B", "HER2(+)", "Triple negative"], n),
        "ALN status": status,
    })  # fmt: skip


# ------------------------------------------------------------------- command-line cohorts
DIM = 16


@dataclass
class TinyCohort:
    features: Path
    labels: Path
    table: pd.DataFrame


def make_tiny_cohort(root: Path, n_patients: int = 30, seed: int = 0, signal: float = 2.0,
                     patch_files: Callable[[str, int], Sequence[str]] | None = None,
                     ) -> TinyCohort:  # fmt: skip
    """`root/features` (one slide per patient, id = patient id) and `root/clinical.csv`;
    `patch_files(slide_id, n_rows)`: the names each slide records for its rows (none if None).

    N+ patients carry a planted signal in a few of their instances (first feature dims
    shifted), so an attention model learns the task in a few epochs; the tumour size carries a
    weak clinical signal.
    """
    rng = np.random.default_rng(seed)
    status = np.array(_cycle(ALN_STATUSES, n_patients))
    rng.shuffle(status)
    slides = {}
    for pid in range(1, n_patients + 1):
        n = int(rng.integers(6, 20))
        x = rng.normal(size=(n, DIM))
        if status[pid - 1] != "N0":
            x[: max(1, n // 4), :4] += signal
        slides[str(pid)] = x
    table = bcnb_table(list(status), seed=seed, size_signal=1.0)
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "clinical.csv"
    table.to_csv(labels, index=False)
    names = None if patch_files is None else {s: patch_files(s, len(x)) for s, x in slides.items()}
    write_store(root / "features", slides, dtype="float32", grid=448, patch_files=names)
    return TinyCohort(root / "features", labels, table)


def fast_args(epochs: int = 3) -> list[str]:
    """`balnmp-mil` options that keep a test run to a second or two on 2 CPU cores."""
    return ["--epochs", str(epochs), "--device", "cpu", "--n-bootstrap", "50",
            "--model-arg", "embed_dim=16", "--model-arg", "attention_dim=8"]


# ------------------------------------------------------------------ the peers' own files
def _peer_dataset(f: Any, name: str, array: np.ndarray, rows: int) -> Any:
    """A dataset the way CLAM's and TRIDENT's `save_hdf5`/`save_h5` create one, not yet
    written: callers rebind it (`d = ...; d[:] = array`) as the peers do, which releases the
    previous dataset at the same moment and so keeps the file's bytes equal to theirs."""
    return f.create_dataset(name, shape=array.shape, maxshape=(None, *array.shape[1:]),
                            chunks=(rows, *array.shape[1:]), dtype=array.dtype)  # fmt: skip


def clam_patches_h5(path: Path, coords: Any, *, patch_size: int, patch_level: int,
                    downsample: Sequence[float], level_dim: Sequence[int],
                    parts: Sequence[int] | None = None,
                    save_path: str | None = None) -> Path:  # fmt: skip
    """CLAM's `create_patches_fp.py` -> `patches/<id>.h5`: `coords` int64 (N, 2), chunks (1, 2),
    written contour by contour (`parts`: rows per contour; attributes with the first);
    `patch_size` is px at `patch_level`; `save_path` is the folder CLAM was told to write to."""
    import h5py

    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    start = 0
    for i, n in enumerate(parts or [len(coords)]):
        part = coords[start : start + n]
        with h5py.File(path, "w" if i == 0 else "a") as f:
            if i == 0:
                d = _peer_dataset(f, "coords", part, 1)
                d[:] = part
                d.attrs["patch_size"] = int(patch_size)
                d.attrs["patch_level"] = int(patch_level)
                d.attrs["downsample"] = tuple(float(v) for v in downsample)
                d.attrs["downsampled_level_dim"] = np.asarray(level_dim, np.int64)
                d.attrs["level_dim"] = tuple(int(v) for v in level_dim)
                d.attrs["name"] = path.stem
                d.attrs["save_path"] = str(path.parent) if save_path is None else save_path
            else:
                d = f["coords"]
                d.resize(len(d) + n, axis=0)
                d[-n:] = part
        start += n
    return path


def clam_features(folder: Path, slide_id: str, features: Any, coords: Any,
                  batch_size: int = 256) -> None:  # fmt: skip
    """CLAM's `extract_features_fp.py` -> `h5_files/<id>.h5` (`features` float32, `coords`
    int32, chunks of 32 rows, reopened per batch, no attributes at all) and `pt_files/<id>.pt`
    (`torch.save` of the float32 tensor)."""
    import h5py
    import torch

    features = np.asarray(features, np.float32)
    coords = np.asarray(coords, np.int32).reshape(-1, 2)
    for sub in ("h5_files", "pt_files"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for a in range(0, len(features), batch_size):
        with h5py.File(folder / "h5_files" / f"{slide_id}.h5", "w" if a == 0 else "a") as f:
            for key, part in (("features", features[a : a + batch_size]),
                              ("coords", coords[a : a + batch_size])):  # fmt: skip
                if key not in f:
                    d = _peer_dataset(f, key, part, 32)
                    d[:] = part
                else:
                    d = f[key]
                    d.resize(len(d) + len(part), axis=0)
                    d[-len(part) :] = part
    torch.save(torch.from_numpy(features), folder / "pt_files" / f"{slide_id}.pt")


def trident_coords_attrs(name: str, coords_dir: Path, *, patch_size: int = 256,
                         mag0: int = 40, target: float = 20, overlap: int = 0,
                         size: tuple[int, int] = (4096, 4096)) -> dict[str, Any]:  # fmt: skip
    """TRIDENT's `coords_to_h5` attributes; `target` an int (its Python API) or a float (its
    `run_batch_of_slides.py`, whose `patch_size_level0` is then float64 too)."""
    return {"patch_size": patch_size, "patch_size_level0": patch_size * mag0 // target,
            "level0_magnification": mag0, "target_magnification": target, "overlap": overlap,
            "name": name, "savetodir": str(coords_dir), "level0_width": size[0],
            "level0_height": size[1]}  # fmt: skip


def trident_slide(coords_dir: Path, encoder: str, name: str, features: Any, coords: Any,
                  attrs: dict[str, Any], saveas: str = "h5",
                  features_dir: str | None = None) -> None:
    """TRIDENT's patching and feature extraction of one slide: `patches/<name>_patches.h5`
    (`coords` int64, chunks (1, 2), `attrs` in the order given: it is part of the bytes) and
    `features_<encoder>/<name>.h5` (`features` as the encoder returned them, float32 (0,) for
    a slide without patches; chunks of one row) or, `saveas="pt"`, `<name>.pt` (`torch.save` of the numpy array). `features_dir`: the
    `savetodir` TRIDENT records on `features` (default: where the file is written)."""
    import h5py
    import torch

    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    features = np.asarray(features) if len(coords) else np.empty((0,), np.float32)
    feats_dir = coords_dir / f"features_{encoder}"
    for folder in (coords_dir / "patches", feats_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(coords_dir / "patches" / f"{name}_patches.h5", "w") as f:
        d = _peer_dataset(f, "coords", coords, 1)
        d[:] = coords
        d.attrs.update(attrs)
    if saveas == "pt":
        torch.save(features, feats_dir / f"{name}.pt")
        return
    with h5py.File(feats_dir / f"{name}.h5", "w") as f:
        d = _peer_dataset(f, "features", features, 1)
        d[:] = features
        d.attrs.update({"name": name, "savetodir": features_dir or str(feats_dir),
                         "encoder": encoder})
        d = _peer_dataset(f, "coords", coords, 1)
        d[:] = coords
        d.attrs.update(sorted(attrs.items()))  # copied as read back: h5py lists them by name
