"""`load_bags`, the cohort loader: any store or pack -> validated packed arrays.

Metadata is checked first (no feature read), then all bags are read straight into one
preallocated (P, D) array (`read_direct` per slide, or one contiguous read for a pack), then
the features are checked for NaN/Inf. Every problem names the slides; never silent.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from balnmp_cache.errors import StoreError
from balnmp_cache.store.feature_store import FeatureStore
from balnmp_cache.store.types import PackedBags, SlideInfo

MIXED_ATTRS = ("encoder", "weights", "target_mpp")  # a cohort must agree on these
FINITE_BLOCK = 4096  # rows checked for NaN/Inf per task
MAX_THREADS = 8
T = TypeVar("T")
H = TypeVar("H", bound=Hashable)


class StoreWarning(UserWarning):
    """A slide was skipped because of a problem (on_problem="warn")."""


def _names(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class _Problems:
    """Collects problems; `settle` raises one StoreError (error) or warns per problem (warn)."""

    def __init__(self, mode: str, source: Path) -> None:
        if mode not in ("error", "warn"):
            raise StoreError(f"on_problem must be 'error' or 'warn', not {mode!r}")
        self.mode = mode
        self.source = source
        self.pending: list[str] = []
        self.reported: list[str] = []

    def add(self, message: str, slides: Sequence[str]) -> None:
        if slides:
            self.pending.append(f"{message}: {_names(list(slides))}")

    def settle(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self.mode == "error":
            raise StoreError(
                f"{self.source}: " + "; ".join(pending)
                + " (fix or remove these slides, or pass on_problem='warn' to skip them)"
            )
        for message in pending:
            warnings.warn(f"{self.source}: skipping slides - {message}", StoreWarning,
                          stacklevel=4)
        self.reported.extend(pending)


def majority(values: Sequence[H]) -> H:
    """Most common value; ties go to the first seen (deterministic)."""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def _check_dims(infos: list[SlideInfo], problems: _Problems) -> list[SlideInfo]:
    if not infos:
        return infos
    dim = majority([i.feature_dim for i in infos])
    odd = [i for i in infos if i.feature_dim != dim]
    problems.add(f"feature dimension differs from the cohort's D={dim}",
                 [f"{i.slide_id} (D={i.feature_dim})" for i in odd])
    return [i for i in infos if i.feature_dim == dim]


def _norm(attr: str, value: object) -> object:
    if attr == "target_mpp" and isinstance(value, (int, float)):
        return round(float(value), 4)
    return value


def _check_mixed(infos: list[SlideInfo], problems: _Problems) -> list[SlideInfo]:
    bad: set[str] = set()
    for attr in MIXED_ATTRS:
        known = [(i, _norm(attr, i.attrs.get(attr))) for i in infos]
        known = [(i, v) for i, v in known if v is not None]
        if len({v for _, v in known}) < 2:
            continue
        common = majority([v for _, v in known])
        odd = [f"{i.slide_id} ({v!r})" for i, v in known if v != common]
        problems.add(f"mixed {attr}: most slides have {common!r} (pass allow_mixed=True "
                     "to combine them anyway)", odd)
        bad.update(i.slide_id for i, v in known if v != common)
    return [i for i in infos if i.slide_id not in bad]


def _requested(store: FeatureStore, slide_ids: Sequence[str] | None,
               problems: _Problems) -> list[str]:  # fmt: skip
    available = store.slide_ids
    if slide_ids is None:
        return available
    wanted = [str(s) for s in slide_ids]
    counts = Counter(wanted)
    problems.add("duplicate slide ids requested", sorted(s for s, n in counts.items() if n > 1))
    present = set(available)
    ids = list(dict.fromkeys(wanted))
    problems.add(f"not in the feature store {store.path}", [s for s in ids if s not in present])
    return [s for s in ids if s in present]


def _infos(store: FeatureStore, ids: list[str], problems: _Problems) -> list[SlideInfo]:
    infos = []
    for sid in ids:
        try:
            infos.append(store.backend.info(sid))
        except StoreError as e:
            problems.add(f"unreadable ({e})", [sid])
    return infos


def _read(store: FeatureStore, infos: list[SlideInfo], features: np.ndarray,
          coords: np.ndarray, offsets: np.ndarray, problems: _Problems) -> np.ndarray:  # fmt: skip
    """Fill the packed arrays; returns a per-slide ok mask (False: read failed, warn mode)."""
    ids = [i.slide_id for i in infos]
    ok = np.ones(len(ids), dtype=bool)
    try:
        store.backend.read_many(ids, features, coords, offsets)
        return ok
    except StoreError:
        if problems.mode == "error":
            raise
    for k, sid in enumerate(ids):  # warn mode: find which slides fail, keep the rest
        a, b = int(offsets[k]), int(offsets[k + 1])
        try:
            store.backend.read_into(sid, features[a:b], coords[a:b])
        except StoreError as e:
            problems.add(f"unreadable ({e})", [sid])
            ok[k] = False
    return ok


def _read_names(store: FeatureStore, infos: list[SlideInfo], ok: np.ndarray,
                problems: _Problems) -> list[np.ndarray | None]:  # fmt: skip
    """Each read slide's source file names (None: it records none); a slide whose names
    cannot be read is a problem like one whose features cannot (clears its `ok` flag)."""
    out: list[np.ndarray | None] = []
    for k, info in enumerate(infos):
        names = None
        if ok[k] and info.has_patch_files:
            try:
                names = store.backend.patch_files(info.slide_id)
            except StoreError as e:
                if problems.mode == "error":
                    raise
                problems.add(f"unreadable ({e})", [info.slide_id])
                ok[k] = False
        out.append(names)
    return out


def joined_names(names: list[np.ndarray | None], counts: np.ndarray) -> np.ndarray | None:
    """Per-slide names as one (P,) str array, "" for rows of slides without; None if none."""
    if all(n is None for n in names):
        return None
    return np.concatenate([np.full(int(c), "", dtype=str) if n is None else n
                           for n, c in zip(names, counts)])  # fmt: skip


def run_parallel(fn: Callable[[T], None], items: Sequence[T]) -> None:
    """fn(item) for every item on a thread pool (numpy and os.preadv release the GIL)."""
    workers = min(MAX_THREADS, os.cpu_count() or 1, len(items))
    if workers <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


# Sign-magnitude IEEE 754: as signed ints, +Inf/+NaN are the values >= the +Inf pattern; as
# unsigned ints, -Inf/-NaN are the values >= the -Inf pattern. Two max-reductions per row
# find both without a temporary array (np.isfinite has no SIMD float16 path and allocates).
_NONFINITE: dict[int, tuple[type[np.signedinteger], int, type[np.unsignedinteger], int]] = {
    2: (np.int16, 0x7C00, np.uint16, 0xFC00),
    4: (np.int32, 0x7F800000, np.uint32, 0xFF800000),
}


def finite_rows(features: np.ndarray) -> np.ndarray:
    """Per-row all-finite flag, in parallel row blocks."""
    out = np.ones(features.shape[0], dtype=bool)
    if features.shape[1] == 0 or features.shape[0] == 0:
        return out
    patterns = _NONFINITE.get(features.dtype.itemsize)

    def check(span: tuple[int, int]) -> None:
        a, b = span
        block = features[a:b]
        if patterns is None or not block.flags.c_contiguous:
            out[a:b] = np.isfinite(block).all(axis=1)
        else:
            signed, pos_inf, unsigned, neg_inf = patterns
            out[a:b] = ((block.view(signed).max(axis=1) < pos_inf)
                        & (block.view(unsigned).max(axis=1) < neg_inf))  # fmt: skip

    n = features.shape[0]
    run_parallel(check, [(a, min(a + FINITE_BLOCK, n)) for a in range(0, n, FINITE_BLOCK)])
    return out


def _compact(packed: PackedBags, keep: np.ndarray) -> PackedBags:
    """Drop bags whose `keep` flag is False (warn mode only; copies the kept rows)."""
    counts = np.diff(packed.offsets)
    rows = np.repeat(keep, counts)
    offsets = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    pick = [i for i, k in enumerate(keep) if k]
    files = None if packed.patch_files is None else packed.patch_files[rows]
    return PackedBags(
        packed.features[rows], packed.coords[rows], offsets,
        [packed.slide_ids[i] for i in pick], [packed.attrs[i] for i in pick],
        [packed.coords_attrs[i] for i in pick], packed.problems, packed.source,
        files if files is not None and (files != "").any() else None,
    )  # fmt: skip


def check_cohort(source: Path, infos: list[SlideInfo], on_problem: str = "error",
                 allow_mixed: bool = False) -> list[SlideInfo]:
    """The one "one cohort" rule, on metadata only: a single feature dimension, no empty bags
    and, unless `allow_mixed`, one encoder, weights and µm/px. Raises one `StoreError` naming
    the slides, or with `on_problem="warn"` warns and returns the slides that pass."""
    problems = _Problems(on_problem, source)
    return _check_cohort(infos, problems, allow_mixed)


def _check_cohort(infos: list[SlideInfo], problems: _Problems,
                  allow_mixed: bool) -> list[SlideInfo]:
    infos = _check_dims(infos, problems)
    problems.add("empty bags (0 patches; check the tissue mask / annotations or drop them)",
                 [i.slide_id for i in infos if i.n_patches == 0])
    infos = [i for i in infos if i.n_patches > 0]
    if not allow_mixed:
        infos = _check_mixed(infos, problems)
    problems.settle()
    return infos


def load_bags(
    source: str | Path | FeatureStore, slide_ids: Sequence[str] | None = None,
    on_problem: str = "error", allow_mixed: bool = False,
) -> PackedBags:  # fmt: skip
    """Load a per-slide store or a pack into packed arrays, validated.

    Problems (unreadable files, NaN/Inf, feature-dim mismatch, duplicate ids, empty bags,
    requested slides missing, mixed encoders / weights / µm/px unless `allow_mixed`) raise
    one `StoreError` naming the slides, or with `on_problem="warn"` warn and skip those slides.
    """
    if isinstance(source, FeatureStore):
        return _load(source, slide_ids, on_problem, allow_mixed)
    with FeatureStore(source) as store:
        return _load(store, slide_ids, on_problem, allow_mixed)


def _load(store: FeatureStore, slide_ids: Sequence[str] | None, on_problem: str,
          allow_mixed: bool) -> PackedBags:  # fmt: skip
    problems = _Problems(on_problem, store.path)
    for message, slides in store.backend.problems():
        problems.add(message, slides)
    infos = _infos(store, _requested(store, slide_ids, problems), problems)
    infos = _check_cohort(infos, problems, allow_mixed)
    if not infos:
        raise StoreError(f"{store.path}: no usable slides to load")

    counts = np.array([i.n_patches for i in infos], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dtype = np.result_type(*{i.dtype for i in infos})
    features = np.empty((int(offsets[-1]), infos[0].feature_dim), dtype=dtype)
    coords = np.empty((int(offsets[-1]), 2), dtype=np.int64)
    ok = _read(store, infos, features, coords, offsets, problems)
    names = _read_names(store, infos, ok, problems)

    bad_rows = store.backend.nonfinite_rows([i.slide_id for i in infos])
    if bad_rows is None:  # per-slide stores: scan (packs were scanned once, when packing)
        finite = finite_rows(features)
        bad_rows = np.add.reduceat(~finite, offsets[:-1]) if len(finite) else np.zeros(0, int)
    bad = ok & (bad_rows > 0)
    problems.add("NaN or Inf in the features (re-extract these slides)",
                 [f"{i.slide_id} ({int(n)} patches)" for i, n, b in zip(infos, bad_rows, bad)
                  if b])  # fmt: skip
    problems.settle()
    packed = PackedBags(
        features, coords, offsets, [i.slide_id for i in infos], [i.attrs for i in infos],
        [i.coords_attrs for i in infos], problems.reported, str(store.path),
        joined_names(names, counts),
    )  # fmt: skip
    keep = ok & ~bad
    if not keep.all():
        packed = _compact(packed, keep)
    if not len(packed):
        raise StoreError(f"{store.path}: no usable slides to load")
    return packed
