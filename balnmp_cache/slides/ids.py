"""The slide-id rule, shared by both stages: a slide's id is its file name without its slide
extension (a folder's own name). The feature store keys bags by this id, and `balnmp-mil`
finds a slide's bag with the same function, so the two can never disagree."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PATCH_IMAGE_SUFFIXES", "SLIDE_SUFFIXES", "is_slide_folder", "slide_id_from_path"]

# Longest first where one ends another (".ome.tiff" before ".tiff").
SLIDE_SUFFIXES = (
    ".ome.tiff", ".ome.tif", ".svs", ".tiff", ".tif", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu",
    ".bif", ".svslide", ".dcm", ".jpg", ".jpeg", ".png", ".bmp", ".isyntax", ".czi",
)  # fmt: skip

# Files that make a folder one slide: pre-cut patch images, or a DICOM WSI series.
PATCH_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
DICOM_SUFFIX = ".dcm"


def slide_id_from_path(path: str | os.PathLike[str]) -> str:
    """The slide id: the file name without its slide extension (a folder's own name)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in SLIDE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def is_slide_folder(folder: Path) -> bool:
    """True for a folder that is one slide: pre-cut patch images or a DICOM series."""
    return any(c.is_file() and c.suffix.lower() in (*PATCH_IMAGE_SUFFIXES, DICOM_SUFFIX)
               for c in folder.iterdir())
