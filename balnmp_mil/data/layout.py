"""How loaded slides become a cohort's packed rows and bags.

`gather_slides` copies the loaded slides' rows, in cohort order, into one tensor on the device;
a bag level (`--bag-level`, the `BAG_LEVELS` registry) groups those slides into bags: one bag
per patient (their slides back to back) or one per slide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from balnmp_cache._registry import Registry
from balnmp_mil.segment import gather_ranges

if TYPE_CHECKING:
    from balnmp_cache.store import PackedBags
    from balnmp_mil.data.load import LoadedBags

__all__ = ["BAG_LEVELS", "BagLayout", "gather_slides", "pack_to_tensor"]


@dataclass
class BagLayout:
    """Bag b owns rows `offsets[b]:offsets[b+1]` and belongs to patient `bag_patient[b]`;
    `bag_slides[b]` names its slides (";"-joined for a patient's bag)."""

    offsets: np.ndarray
    bag_patient: list[int]
    bag_slides: list[str]


BagLevel = Callable[[Sequence[str], Sequence[str], Sequence[str], np.ndarray], BagLayout]
BAG_LEVELS: Registry[BagLevel] = Registry("bag level", "--bag-level")


@BAG_LEVELS.register("patient")
def patient_bags(slides: Sequence[str], slide_patients: Sequence[str], patients: Sequence[str],
                 slide_offsets: np.ndarray) -> BagLayout:
    """One bag per patient: the patient's slides (contiguous, in cohort order) concatenated."""
    pindex = {p: i for i, p in enumerate(patients)}
    slide_pat = np.array([pindex[p] for p in slide_patients])
    first = np.searchsorted(slide_pat, np.arange(len(patients)))
    offsets = np.append(slide_offsets[first], slide_offsets[-1])
    names = [";".join(s for s, p in zip(slides, slide_patients, strict=True) if p == patient)
             for patient in patients]
    return BagLayout(offsets, list(range(len(patients))), names)


@BAG_LEVELS.register("slide")
def slide_bags(slides: Sequence[str], slide_patients: Sequence[str], patients: Sequence[str],
               slide_offsets: np.ndarray) -> BagLayout:
    """One bag per slide; predictions merge a patient's bags (`--merge`)."""
    pindex = {p: i for i, p in enumerate(patients)}
    return BagLayout(slide_offsets, [pindex[p] for p in slide_patients], list(slides))


def pack_to_tensor(
    features: np.ndarray | torch.Tensor, rows: np.ndarray | None, dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """(P, D) array/tensor -> tensor on device, gathering `rows` in chunks (bounded peak)."""
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


def gather_slides(packed: PackedBags | LoadedBags, order: np.ndarray, dtype: torch.dtype,
                  device: torch.device
                  ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray | None]:
    """The rows of slides `order` (positions in `packed`), in that order: (features on
    `device`, coords, slide offsets, patch file names or None). Copies nothing extra when the
    order is already packed."""
    offs = np.asarray(packed.offsets, dtype=np.int64)
    counts = offs[1:][order] - offs[:-1][order]
    contiguous = np.array_equal(order, np.arange(len(packed.slide_ids)))
    rows = None if contiguous else gather_ranges(
        torch.from_numpy(offs[:-1][order]), torch.from_numpy(counts)
    ).numpy()
    features = pack_to_tensor(packed.features, rows, dtype, device)
    coords = np.asarray(packed.coords)
    coords = coords if rows is None else coords[rows]
    files = packed.patch_files
    if files is not None and rows is not None:
        files = np.asarray(files)[rows]
    return features, coords, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), files
