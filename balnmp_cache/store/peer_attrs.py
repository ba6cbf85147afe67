"""Our `coords` attributes in CLAM's and TRIDENT's own meaning: the one home of those rules.

Extraction writes a peer's attribute only where the peer's meaning is ours (see
docs/format.md, "coords attributes"); the exporters (`store/export.py`) write the peers'
full sets; the readers of the peers' caches (`store/foreign.py`) turn them back into a
footprint. Facts about the peers are those of CLAM 53e2409 and TRIDENT a91fa84:

- CLAM's `patch_size` is pixels **at `patch_level`** (a pyramid level), coords are level 0;
  its level-0 footprint is `patch_size * downsample`. CLAM's readers read
  `patch_size` px at `patch_level`, which is what we read when `read_size` px at `level`.
- TRIDENT's `patch_size` is pixels at the target magnification; its readers' level-0
  footprint is `round(patch_size * level0_magnification / target_magnification)`, and its
  `level0_magnification` is an integer chosen by thresholds on the level-0 µm/px.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from balnmp_cache.errors import StoreError
from balnmp_cache.store.types import SlideInfo

__all__ = [
    "clam_downsample", "clam_footprint", "clam_patch_attrs", "coords_attrs_for",
    "trident_attrs", "trident_dir_name", "trident_magnification", "trident_magnifications",
]  # fmt: skip

# TRIDENT's level-0 objective power: the first bound the µm/px (rounded to 4 decimals) is
# below. At 2.4 µm/px and coarser TRIDENT refuses the slide.
TRIDENT_MPP_BOUNDS = ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5))


def trident_magnification(mpp: float | None) -> int | None:
    """TRIDENT's `level0_magnification` of a slide at `mpp` µm/px (0.2527 -> 40, 0.3 -> 20);
    None when the µm/px is unknown or coarser than TRIDENT accepts."""
    if not mpp or mpp <= 0:
        return None
    rounded = round(float(mpp), 4)
    return next((mag for bound, mag in TRIDENT_MPP_BOUNDS if rounded < bound), None)


def trident_magnifications(slide_mpp: float | None, patch_size: int,
                           patch_size_level0: int) -> dict[str, Any]:  # fmt: skip
    """`level0_magnification` snapped as TRIDENT does, and the `target_magnification` that
    makes TRIDENT's footprint `round(patch_size * level0 / target)` equal `patch_size_level0`
    (empty when the µm/px is unknown). At 0.2527 µm/px, 256 px at 0.5 µm/px (507 level-0 px):
    40 and 20.197, not the nominal 20 with which TRIDENT's readers would read 512 px."""
    mag0 = trident_magnification(slide_mpp)
    if mag0 is None or patch_size < 1 or patch_size_level0 < 1:
        return {}
    return {"level0_magnification": mag0,
            "target_magnification": mag0 * patch_size / patch_size_level0}  # fmt: skip


def clam_downsample(level_dimensions: Sequence[Sequence[int]], downsample: float,
                    level: int) -> tuple[float, float]:  # fmt: skip
    """CLAM's `downsample` of `level`: (w0 / w, h0 / h), or (d, d) for the slide's own
    downsample d when those agree."""
    (w0, h0), (w, h) = level_dimensions[0], level_dimensions[level]
    estimate = (w0 / float(w), h0 / float(h))
    d = float(downsample)
    return (d, d) if estimate == (d, d) else estimate


def coords_attrs_for(slide_id: str, *, patch_size: int, patch_size_level0: int,
                     read_size: int, level: int, overlap: int, slide_mpp: float | None,
                     level_dimensions: Sequence[Sequence[int]] | None,
                     level_downsamples: Sequence[float] | None) -> dict[str, Any]:  # fmt: skip
    """The `coords` attributes extraction writes: ours, and every peer attribute whose peer
    meaning is ours. `level_dimensions`/`level_downsamples` are None for a slide that is no
    pyramid (a folder of patches): CLAM's attributes, which name a pyramid level, are then
    left out. `patch_level` is written only when we read `patch_size` px at `level` (no
    resize), the one case where CLAM's `patch_size` means ours."""
    attrs: dict[str, Any] = {
        "patch_size": int(patch_size), "patch_size_level0": int(patch_size_level0),
        "level": int(level), "name": str(slide_id), "overlap": int(overlap),
        **trident_magnifications(slide_mpp, int(patch_size), int(patch_size_level0)),
    }  # fmt: skip
    if level_dimensions is None or level_downsamples is None:
        return attrs
    w0, h0 = (int(v) for v in level_dimensions[0])
    dims = tuple(int(v) for v in level_dimensions[level])
    attrs.update(level0_width=w0, level0_height=h0, level_dim=dims, downsampled_level_dim=dims,
                 downsample=clam_downsample(level_dimensions, level_downsamples[level], level))
    if int(read_size) == int(patch_size):
        attrs["patch_level"] = int(level)
    return attrs


def clam_footprint(coords_attrs: dict) -> int | None:
    """Level-0 patch side of a file with CLAM's attributes (`patch_size` px at
    `patch_level`, times its `downsample`); None when they do not say."""
    size, level = coords_attrs.get("patch_size"), coords_attrs.get("patch_level")
    if size is None or level is None:
        return None
    ds = coords_attrs.get("downsample")
    if ds is None:
        return int(size) if int(level) == 0 else None
    factor = ds[0] if isinstance(ds, (list, tuple)) else ds
    return int(round(float(size) * float(factor)))


def _first(*values: Any) -> Any:
    """The first value that is not None (root attributes read as None when absent)."""
    return next((v for v in values if v is not None), None)


def _need(info: SlideInfo, value: Any, what: str, to: str) -> Any:
    if value is None:
        raise StoreError(f"slide {info.slide_id!r} ({info.source}): {what}, so it cannot be "
                         f"exported to {to}; re-extract it with extract-features")
    return value


def clam_patch_attrs(info: SlideInfo, save_path: str) -> dict[str, Any]:
    """CLAM's `coords` attributes of a slide (those of its `patches/<id>.h5`): `patch_size`
    is our `read_size` and `patch_level` our `level`, since CLAM reads that many px there."""
    a, ca = info.attrs, info.coords_attrs
    if a.get("reader") == "patches":
        raise StoreError(f"slide {info.slide_id!r} ({info.source}) was read from a folder of "
                         "patches, not from a pyramid level of a slide file, which CLAM's "
                         "patch_level must name; it cannot be exported to CLAM")
    level = _need(info, _first(a.get("level"), ca.get("level")), "the store does not record the "
                  "pyramid level its patches were read from (attribute `level`)", "CLAM")
    size = _need(info, a.get("read_size"), "the store does not record how many pixels were "
                 "read at that level (attribute `read_size`)", "CLAM")
    out: dict[str, Any] = {"patch_size": int(size), "patch_level": int(level)}
    if ca.get("downsample") is not None:
        out["downsample"] = tuple(float(v) for v in ca["downsample"])
    elif int(level) == 0:
        out["downsample"] = (1.0, 1.0)
    for key in ("downsampled_level_dim", "level_dim"):
        if ca.get(key) is not None:
            out[key] = tuple(int(v) for v in ca[key])
    out.update(name=info.slide_id, save_path=save_path)
    return out


def _format_mag(mag: float) -> str:
    """A magnification as TRIDENT names its folders: 20 for 20.0, 1.25 for 1.25."""
    m = float(mag)
    return str(int(round(m))) if abs(m - round(m)) < 1e-9 else f"{m:g}"


def trident_dir_name(info: SlideInfo) -> str:
    """`<mag>x_<ps>px_<overlap>px_overlap` for a slide: the nominal magnification of its
    µm/px (10 / target_mpp), else the one its TRIDENT attributes give."""
    a, ca = info.attrs, info.coords_attrs
    mag = 10.0 / a["target_mpp"] if a.get("target_mpp") else ca.get("target_magnification")
    mag = _need(info, mag, "its target µm/px is unknown", "TRIDENT")
    size = _need(info, _first(a.get("patch_size"), ca.get("patch_size")), "its patch size is unknown",
                 "TRIDENT")
    return f"{_format_mag(mag)}x_{int(size)}px_{_overlap(info)}px_overlap"


def _overlap(info: SlideInfo) -> int:
    overlap = info.coords_attrs.get("overlap")
    if overlap is None and info.attrs.get("balnmp_version"):
        overlap = 0  # extract-features has always tiled without overlap
    return int(_need(info, overlap, "its patch overlap is unknown", "TRIDENT"))


def trident_attrs(info: SlideInfo, savetodir: str) -> dict[str, Any]:
    """TRIDENT's `coords` attributes of a slide, with TRIDENT's types (int64 but for the
    derived `target_magnification`); from the µm/px where known (`trident_magnifications`),
    else as the slide's own TRIDENT attributes say."""
    a, ca = info.attrs, info.coords_attrs
    size = int(_need(info, _first(a.get("patch_size"), ca.get("patch_size")),
                     "its patch size is unknown", "TRIDENT"))  # fmt: skip
    size0 = int(_need(info, _first(a.get("patch_size_level0"), ca.get("patch_size_level0")),
                      "its level-0 patch size is unknown", "TRIDENT"))  # fmt: skip
    mags = trident_magnifications(a.get("slide_mpp"), size, size0) or {
        k: ca[k] for k in ("level0_magnification", "target_magnification") if ca.get(k)}
    _need(info, mags.get("level0_magnification") and mags.get("target_magnification"),
          "its level-0 µm/px (or TRIDENT magnification) is unknown", "TRIDENT")
    out: dict[str, Any] = {
        "patch_size": size, "patch_size_level0": size0,
        "level0_magnification": int(mags["level0_magnification"]),
        "target_magnification": mags["target_magnification"], "overlap": _overlap(info),
        "name": info.slide_id, "savetodir": savetodir,
    }  # fmt: skip
    for key in ("level0_width", "level0_height"):
        if ca.get(key) is not None:
            out[key] = int(ca[key])
    return out
