"""Level-0 resolution (µm per pixel) of a slide, from the file's own metadata or the user.

Sources, in order: an explicit `mpp=`; a per-slide overrides CSV; the Aperio `MPP` field;
OpenSlide's `openslide.mpp-x`/`-y`; DICOM pixel spacing; TIFF XResolution/ResolutionUnit.
Readers' made-up default values are never trusted (cuCIM reports spacing 1.0 for SVS files whose
MPP lives only in the Aperio description; image editors write 72 dpi): values outside
`PLAUSIBLE_MPP` are treated as unknown, and unknown is `None`.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path

from balnmp_cache.errors import OptionError

__all__ = [
    "PLAUSIBLE_MPP",
    "aperio_mpp",
    "load_mpp_overrides",
    "mpp_from_properties",
    "philips_mpp",
    "resolution_mpp",
    "resolve_override",
    "tiff_mpp",
]

# µm/px a real microscope slide scan can have (0.05 = 200x oil, 50 = a coarse overview).
PLAUSIBLE_MPP = (0.05, 50.0)
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_APERIO_MPP = re.compile(r"(?:^|\|)\s*MPP\s*=\s*([0-9.eE+-]+)")
# Philips TIFF XML: <Attribute Name="DICOM_PIXEL_SPACING" ...>&quot;0.00024&quot;
# &quot;0.00024&quot;</Attribute> (mm, row then column); the first is the full-resolution one.
_PHILIPS_SPACING = re.compile(r'Name="DICOM_PIXEL_SPACING"[^>]*>([^<]*)<')
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?")


def _plausible(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value if PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1] else None


def _float(text: object) -> float | None:
    try:
        return float(str(text).strip())
    except ValueError:
        return None


def aperio_mpp(description: str) -> float | None:
    """The `MPP = x` field of an Aperio ImageDescription, or None."""
    if not description.startswith("Aperio"):
        return None
    match = _APERIO_MPP.search(description)
    return _plausible(_float(match.group(1))) if match else None


def philips_mpp(description: str) -> float | None:
    """µm/px from a Philips TIFF's XML description (DICOM_PIXEL_SPACING, in mm), or None."""
    if "DICOM_PIXEL_SPACING" not in description:
        return None
    match = _PHILIPS_SPACING.search(description)
    values = [float(v) for v in _NUMBER.findall(match.group(1))] if match else []
    if not values:
        return None
    return _plausible(1000.0 * sum(values[:2]) / len(values[:2]))


def resolution_mpp(resolution: tuple[float, float] | None, unit: int) -> float | None:
    """µm/px from TIFF XResolution/YResolution (pixels per unit); None without a unit."""
    if resolution is None or unit not in _UM_PER_UNIT:
        return None
    xres, yres = resolution
    if xres <= 0 or yres <= 0:
        return None
    return _plausible((_UM_PER_UNIT[unit] / xres + _UM_PER_UNIT[unit] / yres) / 2)


def tiff_mpp(info: object) -> float | None:
    """µm/px from a `tiffprobe.TiffInfo`: the Aperio MPP field, Philips pixel spacing, else
    the resolution tags."""
    description = info.description  # type: ignore[attr-defined]
    return (
        aperio_mpp(description)
        or philips_mpp(description)
        or resolution_mpp(info.resolution, info.resolution_unit)  # type: ignore[attr-defined]
    )


def mpp_from_properties(properties: Mapping[str, str]) -> float | None:
    """µm/px from reader properties (OpenSlide names): `openslide.mpp-x`/`-y`,
    `aperio.MPP`, DICOM `PixelSpacing` (mm), `tiff.XResolution` + `tiff.ResolutionUnit`."""
    mx, my = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    if mx is not None:
        found = _plausible((mx + my) / 2 if my is not None else mx)
        if found is not None:
            return found
    found = _plausible(_float(properties.get("aperio.MPP")))
    if found is not None:
        return found
    for key, value in properties.items():
        if key.endswith("PixelSpacing"):
            parts = [_float(v) for v in re.split(r"[\\,\s\[\]]+", str(value)) if v]
            spacing = [p for p in parts if p is not None]
            if spacing:
                found = _plausible(1000.0 * sum(spacing[:2]) / len(spacing[:2]))
                if found is not None:
                    return found
    xres = _float(properties.get("tiff.XResolution"))
    yres = _float(properties.get("tiff.YResolution"))
    unit = {"inch": 2, "centimeter": 3, "centimetre": 3}.get(
        str(properties.get("tiff.ResolutionUnit", "")).strip().lower(), 0
    )
    if xres is not None:
        return resolution_mpp((xres, yres if yres is not None else xres), unit)
    return None


def load_mpp_overrides(csv_path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a CSV with columns `slide_id` and `mpp` into {slide_id: µm/px}."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
            if "slide_id" not in columns or "mpp" not in columns:
                raise OptionError(
                    f"{path}: needs columns 'slide_id' and 'mpp' (found {reader.fieldnames})"
                )
            out: dict[str, float] = {}
            for row_no, row in enumerate(reader, start=2):
                slide_id = (row[columns["slide_id"]] or "").strip()
                value = _float(row[columns["mpp"]])
                if not slide_id:
                    continue
                if value is None or not value > 0 or not math.isfinite(value):
                    raise OptionError(
                        f"{path} line {row_no}: mpp for slide {slide_id!r} must be a positive "
                        f"number, got {row[columns['mpp']]!r}"
                    )
                if slide_id in out and out[slide_id] != value:
                    raise OptionError(
                        f"{path} line {row_no}: slide {slide_id!r} is listed twice with "
                        f"different mpp ({out[slide_id]} and {value})"
                    )
                out[slide_id] = value
            return out
    except OSError as exc:
        raise OptionError(f"{path}: cannot read the mpp overrides CSV: {exc}") from exc


def _cached_table(path: Path) -> Mapping[str, float]:
    """`load_mpp_overrides`, parsed once per file version (a job opens thousands of slides
    with the same table)."""
    try:
        stat = path.stat()
    except OSError:
        return load_mpp_overrides(path)  # raises with the file name
    return _load_versioned(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_versioned(path: str, mtime_ns: int, size: int) -> Mapping[str, float]:
    return types.MappingProxyType(load_mpp_overrides(path))


def resolve_override(
    path: Path,
    slide_id: str,
    mpp: float | None,
    overrides: Mapping[str, float] | str | os.PathLike[str] | None,
) -> float | None:
    """The user's µm/px for this slide: explicit `mpp` wins, then the overrides table
    (keyed by slide id, or by file name as a fallback); None when the user gave none."""
    if mpp is not None:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise OptionError(f"{path}: mpp must be a positive number, got {mpp!r}")
        return float(mpp)
    if overrides is None:
        return None
    if isinstance(overrides, str | os.PathLike):
        table = _cached_table(Path(overrides))
    else:
        table = overrides
    for key in (slide_id, path.name):
        if key in table:
            return float(table[key])
    return None
