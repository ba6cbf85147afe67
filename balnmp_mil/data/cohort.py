"""A labelled cohort of bags packed in one device tensor (no padding, no per-epoch file reads).

`load_cohort` joins a feature store (read only through `balnmp_cache.store.load_bags`, so this
module never touches slides) with a label table; `cohort_from_bags` builds one from arrays.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from balnmp_mil.data.labels import LabelTable, patient_rows, read_table, resolve_labels
from balnmp_mil.data.layout import BAG_LEVELS, gather_slides
from balnmp_mil.data.load import LoadedBags, load_chunked
from balnmp_mil.data.provenance import store_record
from balnmp_mil.errors import CohortError, LabelError
from balnmp_mil.segment import gather_ranges

if TYPE_CHECKING:
    from balnmp_cache.store import FeatureStore, PackedBags

__all__ = ["BAG_LEVELS", "ON_MISSING", "Cohort", "CohortError", "cohort_from_bags",
           "load_cohort"]

Indices = Sequence[int] | np.ndarray | torch.Tensor


@dataclass
class Cohort:
    """Packed bags of one cohort. Bag b owns `features[offsets[b]:offsets[b+1]]`.

    `bag_level="patient"`: one bag per patient (their slides concatenated); `"slide"`: one
    bag per slide, `bag_patient` maps bags to patients. `slides`/`slide_offsets` locate
    each slide's rows (for heatmaps) whatever the bag level. `patch_files` (P,): each row's
    source file name where the store recorded it ("" elsewhere), else None.
    """

    features: torch.Tensor
    offsets: torch.Tensor
    bag_patient: torch.Tensor
    patient_ids: list[str]
    labels: torch.Tensor
    class_names: list[str]
    slide_ids: list[str]
    coords: np.ndarray
    clinical: torch.Tensor | None = None
    clinical_table: pd.DataFrame | None = None
    bag_level: str = "patient"
    meta: dict[str, Any] = field(default_factory=dict)
    slides: list[str] = field(default_factory=list)
    slide_offsets: np.ndarray | None = None
    patch_files: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_bags(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def n_instances(self) -> int:
        return int(self.features.shape[0])

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def bag_labels(self) -> torch.Tensor:
        """Label of each bag (its patient's label), (B,) int64."""
        return self.labels.index_select(0, self.bag_patient)

    @property
    def bag_sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.patient_ids)

    def bag_clinical(self) -> torch.Tensor | None:
        """Clinical rows per bag (B, K), or None."""
        return None if self.clinical is None else self.clinical.index_select(0, self.bag_patient)

    def subset(self, indices: Indices) -> Cohort:
        """The given patients (indices into `patient_ids`) with all their bags, repacked."""
        idx, keep, bag_new_patient = self.bag_selection(indices)
        offs = self.offsets.cpu()
        starts, counts = offs[:-1][keep], (offs[1:] - offs[:-1])[keep]
        rows = gather_ranges(starts, counts)
        slides, slide_offs = self._subset_slides(rows)
        dev = self.features.device
        return replace(
            self,
            features=self.features.index_select(0, rows.to(dev)),
            offsets=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]).to(
                self.offsets.device
            ),
            bag_patient=bag_new_patient.to(self.bag_patient.device),
            patient_ids=[self.patient_ids[i] for i in idx.tolist()],
            labels=self.labels.index_select(0, idx.to(self.labels.device)),
            slide_ids=[self.slide_ids[i] for i in keep.tolist()],
            coords=self.coords[rows.numpy()],
            patch_files=None if self.patch_files is None else self.patch_files[rows.numpy()],
            clinical=None if self.clinical is None else self.clinical.index_select(
                0, idx.to(self.clinical.device)
            ),
            clinical_table=None if self.clinical_table is None else self.clinical_table.loc[
                [self.patient_ids[i] for i in idx.tolist()]
            ],
            meta=dict(self.meta),
            slides=slides,
            slide_offsets=slide_offs,
        )

    def bag_selection(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For patients `indices`: (patient idx, their bags in subset order, each kept bag's
        new patient index), all CPU int64. `subset` packs bags in exactly this order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"patient index out of range [0, {len(self)})")
        if idx.unique().numel() != idx.numel():
            raise CohortError("subset indices repeat a patient; pass each patient once")
        new_of_old = torch.full((len(self),), -1, dtype=torch.long)
        new_of_old[idx] = torch.arange(idx.numel())
        bag_new_patient = new_of_old[self.bag_patient.cpu()]
        keep = torch.nonzero(bag_new_patient >= 0).flatten()
        # bags ordered by new patient index, keeping their relative order
        keep = keep[torch.argsort(bag_new_patient[keep], stable=True)]
        return idx, keep, bag_new_patient[keep]

    def _subset_slides(self, rows: torch.Tensor) -> tuple[list[str], np.ndarray | None]:
        """Slide bookkeeping after selecting packed `rows` (whole slides, in order)."""
        if self.slide_offsets is None or not self.slides:
            return [], None
        so = torch.as_tensor(self.slide_offsets)
        slide_of_row = torch.searchsorted(so, rows, right=True) - 1
        order = torch.unique_consecutive(slide_of_row)
        counts = so[1:][order] - so[:-1][order]
        offs = np.concatenate([[0], np.cumsum(counts.numpy())]).astype(np.int64)
        return [self.slides[i] for i in order.tolist()], offs

    def with_clinical(self, matrix: np.ndarray | torch.Tensor) -> Cohort:
        """A copy with an encoded clinical matrix (n_patients, K) attached, as float32."""
        mat = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        if mat.dim() != 2 or mat.shape[0] != len(self):
            raise CohortError(
                f"clinical matrix must be (n_patients={len(self)}, K); got {tuple(mat.shape)}"
            )
        return replace(self, clinical=mat.to(self.features.device))

    def to(self, device: str | torch.device) -> Cohort:
        """A copy with all tensors on `device`."""
        dev = torch.device(device)
        return replace(
            self,
            features=self.features.to(dev),
            offsets=self.offsets.to(dev),
            bag_patient=self.bag_patient.to(dev),
            labels=self.labels.to(dev),
            clinical=None if self.clinical is None else self.clinical.to(dev),
        )


def cohort_from_bags(
    bags: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    patient_ids: list[str] | None = None,
    class_names: list[str] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Cohort:
    """A patient-level cohort straight from in-memory bags (one (n_i, D) array per patient)."""
    if not bags:
        raise CohortError("no bags given")
    dims = {np.asarray(b).shape[1] for b in bags}
    if len(dims) != 1 or any(np.asarray(b).ndim != 2 for b in bags):
        raise CohortError(f"every bag must be a 2-D (n_i, D) array with one D; got dims {dims}")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(bags):
        raise CohortError(f"{len(bags)} bags but {len(y)} labels")
    counts = np.array([len(b) for b in bags], dtype=np.int64)
    pids = patient_ids or [str(i) for i in range(len(bags))]
    names = class_names or [str(i) for i in range(int(y.max()) + 1)]
    dev = torch.device(device or "cpu")
    feats = np.concatenate([np.asarray(b, dtype=np.float32) for b in bags], axis=0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Cohort(
        features=torch.from_numpy(feats).to(device=dev, dtype=dtype),
        offsets=torch.from_numpy(offsets).to(dev),
        bag_patient=torch.arange(len(bags), device=dev),
        patient_ids=list(pids),
        labels=torch.from_numpy(y).to(dev),
        class_names=list(names),
        slide_ids=list(pids),
        coords=np.zeros((len(feats), 2), dtype=np.int64),
        bag_level="patient",
        meta={"source": "arrays"},
        slides=list(pids),
        slide_offsets=offsets.copy(),
    )


ON_MISSING = ("error", "warn")

Labels = str | os.PathLike[str] | pd.DataFrame | LabelTable
Clinical = str | os.PathLike[str] | pd.DataFrame | bool | None  # True: the label table


def _resolve(labels: Labels, task: str | None, positive: str | None
             ) -> tuple[LabelTable, pd.DataFrame]:
    """The resolved labels and the raw table; errors about the table name its file."""
    if isinstance(labels, LabelTable):
        return labels, labels.frame
    if isinstance(labels, pd.DataFrame):
        return resolve_labels(labels, task=task, positive=positive), labels
    df = read_table(labels, "labels file")
    try:
        return resolve_labels(df, task=task, positive=positive), df
    except LabelError as exc:
        raise LabelError(f"labels file {labels}: {exc}") from exc


@dataclass
class _Request:
    """What `load_cohort` was asked for, carried to the assembly."""

    table: LabelTable
    label_df: pd.DataFrame
    clinical: Clinical
    bag_level: str
    device: torch.device
    dtype: torch.dtype
    on_missing: str
    allow_mixed: bool
    slide_patient: dict[str, str] = field(init=False)  # labelled slide id -> patient id

    def __post_init__(self) -> None:
        frame = self.table.frame  # without a slide column, a slide id is its patient id
        slides = frame["slide_id"] if self.table.has_slides else frame["patient_id"]
        self.slide_patient = dict(zip((str(s) for s in slides), frame["patient_id"],
                                      strict=True))


def load_cohort(
    store_or_pack: str | os.PathLike[str] | FeatureStore | PackedBags,
    labels: Labels,
    clinical: Clinical = None,
    task: str | None = None,
    bag_level: str = "patient",
    device: str | torch.device | None = None,
    on_missing: str = "error",
    allow_mixed: bool = False,
    dtype: torch.dtype = torch.float32,
    positive: str | None = None,
) -> Cohort:
    """Labelled bags from a feature store or pack, packed on `device`.

    `labels`: CSV/XLSX path, DataFrame or LabelTable (see `resolve_labels`); `positive`: the
    positive class of a binary `label` column (default: `1`, `True` or a recognised name).
    `clinical`: table path/DataFrame (or True: the label table itself); raw rows are kept in
    `cohort.clinical_table` so the caller fits its encoder on the training split only.
    `on_missing`: "error" (default) or "warn" (skip labelled slides absent from the store).
    `allow_mixed`: combine slides of different encoders, weights or µm/px.
    `dtype`: storage dtype of the packed features (float32, or float16 to halve memory).
    """
    if bag_level not in BAG_LEVELS:
        raise CohortError(BAG_LEVELS.unknown(bag_level))
    if on_missing not in ON_MISSING:
        raise CohortError(f"unknown --on-missing {on_missing!r}; choose one of "
                          f"{', '.join(ON_MISSING)}")
    from balnmp_cache.store import FeatureStore, PackedBags

    table, label_df = _resolve(labels, task, positive)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    request = _Request(table, label_df, clinical, bag_level, dev, dtype, on_missing, allow_mixed)
    if isinstance(store_or_pack, (PackedBags, FeatureStore)):
        return _from_store(store_or_pack, request)
    with FeatureStore(Path(store_or_pack)) as store:
        return _from_store(store, request)


def _from_store(store: FeatureStore | PackedBags, request: _Request) -> Cohort:
    """Check labelled slides against the store, load them in patient order, assemble."""
    from balnmp_cache.store import PackedBags

    slide_patient = request.slide_patient
    available = set(store.slide_ids)
    source = "PackedBags" if isinstance(store, PackedBags) else str(store.path)
    missing = [s for s in slide_patient if s not in available]
    if missing and request.on_missing == "error":
        raise CohortError(
            f"{len(missing)} labelled slides are not in the feature store {source}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; extract them, or pass "
            "--on-missing warn to skip them"
        )
    if missing:
        warnings.warn(
            f"skipping {len(missing)} labelled slides absent from {source}: {missing[:10]}",
            stacklevel=3,
        )
    present = [s for s in slide_patient if s in available]
    if not present:
        raise CohortError(f"no labelled slide is in the feature store {source}")
    # order slides by patient so a patient's slides are contiguous
    patient_order = list(dict.fromkeys(slide_patient[s] for s in present))
    rank = {p: i for i, p in enumerate(patient_order)}
    present.sort(key=lambda s: rank[slide_patient[s]])
    packed = store if isinstance(store, PackedBags) else load_chunked(
        store, present, request.on_missing, request.allow_mixed, request.dtype, request.device)
    found = {"store": source, "missing_slides": missing,
             "n_unlabelled_slides": len(available) - len(present)}
    return _assemble(packed, present, request, found)


def _assemble(packed: PackedBags | LoadedBags, present: list[str], request: _Request,
              found: dict[str, Any]) -> Cohort:
    """Reorder the loaded slides by patient and build the packed Cohort."""
    pos = {s: i for i, s in enumerate(packed.slide_ids)}
    loaded = [s for s in present if s in pos]
    skipped = [s for s in present if s not in pos]
    if not loaded:
        raise CohortError(f"none of the labelled slides could be loaded from {found['store']}")
    order = np.array([pos[s] for s in loaded], dtype=np.int64)
    features, coords, slide_offsets, files = gather_slides(packed, order, request.dtype,
                                                           request.device)
    slide_patient = request.slide_patient
    slide_patients = [slide_patient[s] for s in loaded]
    patients = list(dict.fromkeys(slide_patients))
    bags = BAG_LEVELS.get(request.bag_level)(loaded, slide_patients, patients, slide_offsets)
    plabels = request.table.patient_labels()
    clinical = request.label_df if request.clinical is True else request.clinical
    clinical_table = (None if clinical is None or isinstance(clinical, bool)
                      else patient_rows(clinical, patients))
    dev = request.device
    return Cohort(
        features=features,
        offsets=torch.from_numpy(np.asarray(bags.offsets, dtype=np.int64)).to(dev),
        bag_patient=torch.tensor(bags.bag_patient, dtype=torch.long, device=dev),
        patient_ids=patients,
        labels=torch.tensor([plabels[p] for p in patients], dtype=torch.long, device=dev),
        class_names=list(request.table.class_names),
        slide_ids=bags.bag_slides,
        coords=coords,
        clinical_table=clinical_table,
        bag_level=request.bag_level,
        meta=_meta(packed, request, found, skipped),
        slides=list(loaded),
        slide_offsets=slide_offsets,
        patch_files=files,
    )


def _meta(packed: PackedBags | LoadedBags, request: _Request, found: dict[str, Any],
          skipped: list[str]) -> dict[str, Any]:
    """`cohort.meta`: where the bags came from, the store's settings and what was left out."""
    attrs0 = packed.attrs[0] if packed.attrs else {}
    table = request.table
    missing = found["missing_slides"] + skipped
    return {
        "store": found["store"],
        "encoder": attrs0.get("encoder"),
        "weights": attrs0.get("weights"),
        "mpp": attrs0.get("target_mpp"),
        "patch_size": attrs0.get("patch_size"),
        "task": table.task,
        "n_dropped": table.n_dropped,
        "dropped": table.dropped,
        "n_missing_slides": len(missing),
        "missing_slides": missing,
        "n_unlabelled_slides": found["n_unlabelled_slides"],
        "dtype": str(request.dtype).replace("torch.", ""),
        "store_record": store_record(packed.attrs, int(packed.features.shape[1])),
    }
