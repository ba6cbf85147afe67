"""A labelled cohort of bags packed in one device tensor (no padding, no per-epoch file reads).

Features are loaded only through :func:`balnmp_cache.store.load_bags`; this module never
touches slides.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from balnmp_mil.data.labels import (
    PATIENT_COLUMNS,
    LabelTable,
    find_column,
    normalize_id,
    read_table,
    resolve_labels,
)
from balnmp_mil.data.load import load_chunked
from balnmp_mil.errors import CohortError
from balnmp_mil.segment import gather_ranges

__all__ = ["Cohort", "CohortError", "load_cohort", "cohort_from_bags"]

BAG_LEVELS = ("patient", "slide")


@dataclass
class Cohort:
    """Packed bags of one cohort. Bag b owns ``features[offsets[b]:offsets[b+1]]``.

    ``bag_level="patient"``: one bag per patient (their slides concatenated); ``"slide"``: one
    bag per slide, ``bag_patient`` maps bags to patients. ``slides``/``slide_offsets`` locate
    each slide's rows (for heatmaps) whatever the bag level.
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

    def subset(self, indices: Any) -> Cohort:
        """The given patients (indices into ``patient_ids``) with all their bags, repacked."""
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

    def bag_selection(self, indices: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For patients ``indices``: (patient idx, their bags in subset order, each kept bag's
        new patient index), all CPU int64. ``subset`` packs bags in exactly this order."""
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
        """Slide bookkeeping after selecting packed ``rows`` (whole slides, in order)."""
        if self.slide_offsets is None or not self.slides:
            return [], None
        so = torch.as_tensor(self.slide_offsets)
        slide_of_row = torch.searchsorted(so, rows, right=True) - 1
        order = torch.unique_consecutive(slide_of_row)
        counts = so[1:][order] - so[:-1][order]
        offs = np.concatenate([[0], np.cumsum(counts.numpy())]).astype(np.int64)
        return [self.slides[i] for i in order.tolist()], offs

    def with_clinical(self, matrix: Any) -> Cohort:
        """A copy with an encoded clinical matrix (n_patients, K) attached, as float32."""
        mat = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        if mat.dim() != 2 or mat.shape[0] != len(self):
            raise CohortError(
                f"clinical matrix must be (n_patients={len(self)}, K); got {tuple(mat.shape)}"
            )
        return replace(self, clinical=mat.to(self.features.device))

    def to(self, device: str | torch.device) -> Cohort:
        """A copy with all tensors on ``device``."""
        dev = torch.device(device)
        return replace(
            self,
            features=self.features.to(dev),
            offsets=self.offsets.to(dev),
            bag_patient=self.bag_patient.to(dev),
            labels=self.labels.to(dev),
            clinical=None if self.clinical is None else self.clinical.to(dev),
        )


def _pack_to_tensor(
    features: np.ndarray | torch.Tensor, rows: np.ndarray | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(P, D) array/tensor -> tensor on device, gathering ``rows`` in chunks (bounded peak)."""
    if isinstance(features, torch.Tensor):
        src = features
    else:
        src = torch.from_numpy(np.ascontiguousarray(features))
    if rows is None:
        return src.to(device=device, dtype=dtype)
    out = torch.empty((len(rows), src.shape[1]), dtype=dtype, device=device)
    step = 1 << 16
    for i in range(0, len(rows), step):
        sel = torch.from_numpy(rows[i : i + step])
        out[i : i + step] = src.index_select(0, sel).to(device=device, dtype=dtype)
    return out


def cohort_from_bags(
    bags: list[np.ndarray],
    labels: Any,
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


def _clinical_rows(clinical: Any, label_df: pd.DataFrame, patient_ids: list[str]) -> pd.DataFrame:
    """Raw clinical rows indexed by patient id, one per cohort patient, in cohort order."""
    df = label_df if clinical is True else clinical
    if not isinstance(df, pd.DataFrame):
        df = read_table(df)
    col = find_column(df, *PATIENT_COLUMNS)
    table = df.copy()
    table.index = pd.Index(table[col].map(normalize_id), name="patient_id")
    table = table[~table.index.duplicated(keep="first")]
    missing = [p for p in patient_ids if p not in table.index]
    if missing:
        raise CohortError(
            f"{len(missing)} patients have no clinical row: {missing[:10]}; "
            "add them to the clinical table"
        )
    return table.loc[patient_ids]


def _resolve(labels: Any, task: str | None) -> tuple[LabelTable, pd.DataFrame]:
    if isinstance(labels, LabelTable):
        return labels, labels.frame
    df = labels if isinstance(labels, pd.DataFrame) else read_table(labels)
    return resolve_labels(df, task=task), df


def load_cohort(
    store_or_pack: Any,
    labels: Any,
    clinical: Any = None,
    task: str | None = None,
    bag_level: str = "patient",
    device: str | torch.device | None = None,
    on_missing: str = "error",
    allow_mixed: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Cohort:
    """Labelled bags from a feature store or pack, packed on ``device``.

    ``labels``: CSV/XLSX path, DataFrame or LabelTable (see :func:`resolve_labels`).
    ``clinical``: table path/DataFrame (or True: the label table itself); raw rows are kept in
    ``cohort.clinical_table`` so the caller fits its encoder on the training split only.
    ``on_missing``: "error" (default) or "warn" (skip labelled slides absent from the store).
    ``dtype``: storage dtype of the packed features (float32, or float16 to halve memory).
    """
    if bag_level not in BAG_LEVELS:
        raise CohortError(f"bag_level must be one of {BAG_LEVELS}; got {bag_level!r}")
    if on_missing not in ("error", "warn"):
        raise CohortError(f"on_missing must be 'error' or 'warn'; got {on_missing!r}")
    from balnmp_cache.store import FeatureStore, PackedBags

    table, label_df = _resolve(labels, task)
    frame = table.frame
    slide_col = frame["slide_id"] if table.has_slides else frame["patient_id"]
    wanted = [str(s) for s in slide_col]
    slide_patient = dict(zip(wanted, frame["patient_id"], strict=True))

    if isinstance(store_or_pack, (PackedBags, FeatureStore)):
        return _from_packed(store_or_pack, store_or_pack, wanted, slide_patient, table, label_df,
                            clinical, bag_level, device, dtype, on_missing, allow_mixed)
    with FeatureStore(store_or_pack) as store:
        return _from_packed(store, store_or_pack, wanted, slide_patient, table, label_df,
                            clinical, bag_level, device, dtype, on_missing, allow_mixed)


def _from_packed(
    store: Any, given: Any, wanted: list[str], slide_patient: dict[str, str], table: LabelTable,
    label_df: pd.DataFrame, clinical: Any, bag_level: str, device: Any, dtype: torch.dtype,
    on_missing: str, allow_mixed: bool,
) -> Cohort:
    """Check labelled slides against the store, load them in patient order, assemble."""
    from balnmp_cache.store import PackedBags

    is_packed = isinstance(store, PackedBags)
    available = set(store.slide_ids)
    source = "PackedBags" if is_packed else str(getattr(store, "path", given))
    missing = [s for s in wanted if s not in available]
    if missing and on_missing == "error":
        raise CohortError(
            f"{len(missing)} labelled slides are not in the feature store {source}: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; extract them, or pass "
            "on_missing='warn' to skip them"
        )
    if missing:
        warnings.warn(
            f"skipping {len(missing)} labelled slides absent from {source}: {missing[:10]}",
            stacklevel=3,
        )
    present = [s for s in wanted if s in available]
    if not present:
        raise CohortError(f"no labelled slide is in the feature store {source}")
    # order slides by patient so a patient's slides are contiguous
    patient_order = list(dict.fromkeys(slide_patient[s] for s in present))
    rank = {p: i for i, p in enumerate(patient_order)}
    present.sort(key=lambda s: rank[slide_patient[s]])
    dev = torch.device(device) if device is not None else torch.device("cpu")
    packed = store if is_packed else load_chunked(store, present, on_missing, allow_mixed,
                                                  dtype, dev)
    return _assemble(packed, present, slide_patient, table, label_df, clinical, bag_level,
                     device, dtype, missing, source, len(available))


def _assemble(
    packed: Any,
    present: list[str],
    slide_patient: dict[str, str],
    table: LabelTable,
    label_df: pd.DataFrame,
    clinical: Any,
    bag_level: str,
    device: Any,
    dtype: torch.dtype,
    missing: list[str],
    source: str,
    n_available: int,
) -> Cohort:
    """Reorder the loaded slides by patient and build the packed Cohort."""
    pos = {s: i for i, s in enumerate(packed.slide_ids)}
    loaded = [s for s in present if s in pos]
    skipped = [s for s in present if s not in pos]
    if not loaded:
        raise CohortError(f"none of the labelled slides could be loaded from {source}")
    offs = np.asarray(packed.offsets, dtype=np.int64)
    order = np.array([pos[s] for s in loaded], dtype=np.int64)
    counts = offs[1:][order] - offs[:-1][order]
    contiguous = np.array_equal(order, np.arange(len(packed.slide_ids)))
    rows = None if contiguous else gather_ranges(
        torch.from_numpy(offs[:-1][order]), torch.from_numpy(counts)
    ).numpy()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    features = _pack_to_tensor(packed.features, rows, dtype, dev)
    coords = np.asarray(packed.coords)
    coords = coords if rows is None else coords[rows]
    slide_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    patients = list(dict.fromkeys(slide_patient[s] for s in loaded))
    pindex = {p: i for i, p in enumerate(patients)}
    plabels = table.patient_labels()
    if bag_level == "slide":
        bag_offsets, bag_patient = slide_offsets, [pindex[slide_patient[s]] for s in loaded]
        bag_slides = list(loaded)
    else:
        slide_pat = np.array([pindex[slide_patient[s]] for s in loaded])
        first = np.searchsorted(slide_pat, np.arange(len(patients)))
        bag_offsets = np.append(slide_offsets[first], slide_offsets[-1])
        bag_patient = list(range(len(patients)))
        bag_slides = [";".join(s for s in loaded if slide_patient[s] == p) for p in patients]
    attrs0 = packed.attrs[0] if getattr(packed, "attrs", None) else {}
    meta = {
        "store": source,
        "encoder": attrs0.get("encoder"),
        "weights": attrs0.get("weights"),
        "mpp": attrs0.get("target_mpp"),
        "patch_size": attrs0.get("patch_size"),
        "task": table.task,
        "n_dropped": table.n_dropped,
        "dropped": table.dropped,
        "n_missing_slides": len(missing) + len(skipped),
        "missing_slides": missing + skipped,
        "n_unlabelled_slides": n_available - len(present),
        "dtype": str(dtype).replace("torch.", ""),
    }
    clinical_table = None if clinical is None else _clinical_rows(clinical, label_df, patients)
    return Cohort(
        features=features,
        offsets=torch.from_numpy(np.asarray(bag_offsets, dtype=np.int64)).to(dev),
        bag_patient=torch.tensor(bag_patient, dtype=torch.long, device=dev),
        patient_ids=patients,
        labels=torch.tensor([plabels[p] for p in patients], dtype=torch.long, device=dev),
        class_names=list(table.class_names),
        slide_ids=bag_slides,
        coords=coords,
        clinical_table=clinical_table,
        bag_level=bag_level,
        meta=meta,
        slides=list(loaded),
        slide_offsets=slide_offsets,
    )
