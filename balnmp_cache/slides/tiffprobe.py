"""Cheap structural probe of a slide file, done before any native reader touches it.

tifffile reads only the TIFF tags (no pixels): compression, tiling, photometric, planar
configuration, the pyramid, the Aperio description and the resolution tags. From those we
decide whether cuCIM can decode the file correctly: cuCIM segfaults on some TIFFs (for example
deflate tiles with a horizontal predictor), so it is handed only structures from an allow-list
that the test suite checks pixel-for-pixel against OpenSlide.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CUCIM_COMPRESSIONS",
    "SourceInfo",
    "TiffInfo",
    "TiffLevel",
    "clear_probe_cache",
    "cucim_support",
    "probe_source",
    "probe_tiff",
]

# TIFF compression ids cuCIM 25.x/26.x decodes correctly (checked against OpenSlide in
# tests/test_slide_compat.py), with the predictors each accepts. Deflate with a predictor
# crashes cuCIM (SIGSEGV); zstd, webp, packbits, JPEG 2000 and JPEG XL raise.
CUCIM_COMPRESSIONS: dict[int, tuple[str, frozenset[int]]] = {
    1: ("none", frozenset({1})),
    5: ("LZW", frozenset({1, 2})),
    7: ("JPEG", frozenset({1})),
    8: ("Adobe deflate", frozenset({1})),
    32946: ("deflate", frozenset({1})),
}
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Probes keyed by (path, inode, size, mtime): a slide reopened by another worker or stage is
# not re-parsed, and a file that changed on disk is.
_CACHE: OrderedDict[tuple, TiffInfo] = OrderedDict()
_CACHE_SIZE = 512
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class TiffLevel:
    """Tags of one pyramid page that decide which reader can decode it."""

    index: int
    width: int
    height: int
    tiled: bool
    tile: tuple[int, int] | None
    compression: int
    photometric: int
    planar: int
    samples: int
    bits: int
    dtype: str
    predictor: int
    subfiletype: int
    data_end: int  # one past the last byte of pixel data


@dataclass(frozen=True)
class TiffInfo:
    """What tifffile sees in a TIFF: pyramid pages (largest first) and metadata."""

    flavour: str  # "svs", "ndpi", "philips", "ome", "scn", "bif", "generic"
    levels: tuple[TiffLevel, ...]
    description: str
    resolution: tuple[float, float] | None  # XResolution, YResolution of level 0
    resolution_unit: int  # 1 none, 2 inch, 3 centimetre
    file_size: int
    subifds: int = 0  # reduced levels stored as SubIFDs of level 0 (OME-TIFF pyramids)


@dataclass(frozen=True)
class SourceInfo:
    """What `open_slide` was given: a file (maybe a TIFF) or a directory."""

    path: Path
    is_dir: bool
    size: int
    tiff: TiffInfo | None = None
    tiff_error: str | None = None
    extras: dict[str, str] = field(default_factory=dict)


def probe_source(path: Path, error: Callable[[Path, str], Exception]) -> SourceInfo:
    """Stat the path and, for TIFFs, read the tags; `error(path, reason)` builds the
    exception raised for a missing, empty, unreadable or truncated file."""
    path = Path(path)
    if path.is_dir():
        return SourceInfo(path=path, is_dir=True, size=0)
    if not path.exists():
        raise error(path, "file does not exist; check the path")
    try:
        stat = path.stat()
        size = stat.st_size
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise error(path, f"cannot read the file: {exc.strerror or exc}") from exc
    if size == 0:
        raise error(path, "file is empty (0 bytes); re-copy or re-export the slide")
    if magic not in _TIFF_MAGIC:
        return SourceInfo(path=path, is_dir=False, size=size)
    key = (str(path.resolve()), stat.st_ino, size, stat.st_mtime_ns)
    with _CACHE_LOCK:
        info = _CACHE.get(key)
    if info is None:
        try:
            info = probe_tiff(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types on broken files
            raise error(path, f"broken TIFF structure ({type(exc).__name__}: {exc})") from exc
        with _CACHE_LOCK:
            _CACHE[key] = info
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    if not info.levels:
        raise error(path, "TIFF holds no image pages")
    end = max(level.data_end for level in info.levels)
    if end > size:
        raise error(
            path,
            f"file is truncated: pixel data runs to byte {end} but the file has {size} bytes; "
            "re-copy the slide",
        )
    return SourceInfo(path=path, is_dir=False, size=size, tiff=info)


def clear_probe_cache() -> None:
    """Forget cached probes (tests; or after rewriting files in place within one second)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def probe_tiff(path: Path) -> TiffInfo:
    """Read the tags of every pyramid page of a TIFF (no pixel data)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        flavour = next(
            (name for name in ("svs", "ndpi", "philips", "scn", "bif", "ome") if
             getattr(tif, f"is_{name}", False)),
            "generic",
        )  # fmt: skip
        pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
        levels = _pyramid(pages, flavour)
        first = pages[0] if pages else None
        description = first.description if first is not None else ""
        resolution, unit = None, 1
        if first is not None and "XResolution" in first.tags:
            xres, yres = first.tags["XResolution"].value, first.tags.get("YResolution")
            resolution = (_ratio(xres), _ratio(yres.value if yres is not None else xres))
            unit_tag = first.tags.get("ResolutionUnit")
            unit = int(unit_tag.value) if unit_tag is not None else 2
        subifds = first.tags.get("SubIFDs") if first is not None else None
        return TiffInfo(
            subifds=len(subifds.value) if subifds is not None else 0,
            flavour=flavour,
            levels=tuple(_level(i, p) for i, p in levels),
            description=description or "",
            resolution=resolution,
            resolution_unit=unit,
            file_size=Path(path).stat().st_size,
        )


def _pyramid(pages: list, flavour: str) -> list[tuple[int, object]]:
    """Pages that form the pyramid: level 0 and the tiled pages of decreasing size (Aperio
    thumbnail/label/macro strips are skipped, as OpenSlide does)."""
    if not pages:
        return []
    out = [(0, pages[0])]
    for i, page in enumerate(pages[1:], start=1):
        if not page.is_tiled or page.imagewidth >= out[-1][1].imagewidth:
            continue
        out.append((i, page))
    return out


def _ratio(value: object) -> float:
    if isinstance(value, tuple):
        num, den = value
        return float(num) / float(den) if den else 0.0
    return float(value)  # type: ignore[arg-type]


def _level(index: int, page: object) -> TiffLevel:
    tags = page.tags  # type: ignore[attr-defined]
    predictor = tags.get("Predictor")
    subfile = tags.get("NewSubfileType")
    offsets, counts = page.dataoffsets, page.databytecounts  # type: ignore[attr-defined]
    end = max((o + c for o, c in zip(offsets, counts, strict=False) if c), default=0)
    tiled = bool(page.is_tiled)  # type: ignore[attr-defined]
    return TiffLevel(
        index=index,
        width=int(page.imagewidth),  # type: ignore[attr-defined]
        height=int(page.imagelength),  # type: ignore[attr-defined]
        tiled=tiled,
        tile=(int(page.tilewidth), int(page.tilelength)) if tiled else None,  # type: ignore[attr-defined]
        compression=int(page.compression),  # type: ignore[attr-defined]
        photometric=int(page.photometric),  # type: ignore[attr-defined]
        planar=int(page.planarconfig),  # type: ignore[attr-defined]
        samples=int(page.samplesperpixel),  # type: ignore[attr-defined]
        bits=int(page.bitspersample),  # type: ignore[attr-defined]
        dtype=str(page.dtype),  # type: ignore[attr-defined]
        predictor=int(predictor.value) if predictor is not None else 1,
        subfiletype=int(subfile.value) if subfile is not None else 0,
        data_end=int(end),
    )


def cucim_support(info: TiffInfo) -> str | None:
    """None when cuCIM decodes this TIFF correctly, else why it must not be given it."""
    if info.flavour not in ("svs", "philips", "generic"):
        return f"{info.flavour.upper()} TIFF is not a cuCIM format"
    if info.subifds:
        return "its pyramid is stored in SubIFDs, which cuCIM does not read"
    for n, level in enumerate(info.levels):
        where = f"level {n} (page {level.index})"
        if not level.tiled:
            return f"{where} is stored in strips, not tiles"
        codec = CUCIM_COMPRESSIONS.get(level.compression)
        if codec is None:
            return f"{where} uses TIFF compression {level.compression}, which cuCIM cannot decode"
        name, predictors = codec
        if level.predictor not in predictors:
            return f"{where}: {name} with predictor {level.predictor} crashes cuCIM"
        if level.samples != 3 or level.bits != 8 or level.planar != 1:
            return (
                f"{where} has {level.samples} samples of {level.bits} bits "
                f"(planar config {level.planar}); cuCIM needs interleaved 8-bit RGB"
            )
        if level.photometric == _PHOTOMETRIC_YCBCR and level.compression != 7:
            return f"{where} is YCbCr without JPEG"
        if level.photometric not in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR):
            return f"{where} has photometric {level.photometric}; cuCIM needs RGB or YCbCr"
        if info.flavour == "generic" and n > 0 and level.subfiletype != 1:
            return f"{where} is not marked as a reduced-resolution page (NewSubfileType 1)"
    return None
