"""Check a BCNB download before spending GPU hours on it.

    python examples/bcnb/check_data.py /data/BCNB [--expect-patients 1058]

BCNB (https://bupt-ai-cz.github.io/BCNB/) is not redistributable: request it on the dataset
page, unpack it, and point this script at the folder. It accepts the layouts seen in the
distributed archives and says exactly what is missing:

    BCNB/
      WSIs/<id>.jpg + WSIs/<id>.json            whole-slide JPEGs + BALNMP tumour polygons
      paper_patches/[patches/]<id>/<id>_*.jpg   pre-cut 256 px tumour patches (the paper's)
      patient-clinical-data.xlsx                clinical table with `Patient ID`, `ALN status`

Exit status 0 when the data can be used (the summary says which sources were found), 2 when
not (the message names the file or folder and what to do).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from balnmp_mil.data.labels import ALN_STATUSES, aln_status

CLINICAL_NAMES = ("patient-clinical-data.xlsx", "patient-clinical-data.csv")
REQUIRED_COLUMNS = ("Patient ID", "ALN status")
ALN_VALUES = set(ALN_STATUSES)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
# What macOS's Archive Utility adds to a zip (resource forks): never data, always ignored.
MACOS_FOLDER, MACOS_PREFIX = "__MACOSX", "._"


class BCNBLayoutError(Exception):
    """The folder is not a usable BCNB download; the message says what to fix."""


@dataclass
class BCNBLayout:
    """What was found in a BCNB folder."""

    root: Path
    clinical: Path
    patients: list[str]
    wsi_dir: Path | None = None
    wsis: list[str] = field(default_factory=list)
    annotated: list[str] = field(default_factory=list)
    patch_dir: Path | None = None
    patch_patients: list[str] = field(default_factory=list)
    n_patches: int = 0
    aln_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"BCNB at {self.root}", f"  clinical table: {self.clinical.name}, "
                 f"{len(self.patients)} patients, ALN status {self.aln_counts}"]
        if self.wsi_dir is not None:
            lines.append(f"  whole-slide images: {len(self.wsis)} in {self.wsi_dir} "
                         f"({len(self.annotated)} with a tumour annotation JSON)")
        if self.patch_dir is not None:
            lines.append(f"  paper patches: {self.n_patches} patches of "
                         f"{len(self.patch_patients)} patients in {self.patch_dir}")
        return "\n".join(lines)


def _norm(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum() or ch in "+()<>")


def read_clinical(path: Path) -> pd.DataFrame:
    """Read the clinical table and normalise `Patient ID` to str and `ALN status` spelling."""
    try:
        df = pd.read_excel(path) if path.suffix.lower() in {".xlsx", ".xls"} else pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise BCNBLayoutError(f"{path}: cannot read the clinical table ({exc})") from exc
    columns = {_norm(c): c for c in df.columns}
    for wanted in REQUIRED_COLUMNS:
        if _norm(wanted) not in columns:
            raise BCNBLayoutError(
                f"{path}: no column {wanted!r} (found {list(df.columns)}); is this the BCNB "
                "patient-clinical-data.xlsx?")
    df = df.rename(columns={columns[_norm(c)]: c for c in REQUIRED_COLUMNS})
    df["Patient ID"] = df["Patient ID"].map(lambda v: str(int(v)) if isinstance(v, float | int)
                                            else str(v).strip())
    status = df["ALN status"].map(aln_status)  # balnmp-mil train's rule (labels.aln_status)
    bad = sorted({str(v) for v, s in zip(df["ALN status"], status, strict=True) if pd.isna(s)})
    if bad:
        raise BCNBLayoutError(f"{path}: column 'ALN status' has values {bad}; expected "
                              f"{sorted(ALN_VALUES)}")
    df["ALN status"] = status
    dup = df["Patient ID"][df["Patient ID"].duplicated()].tolist()
    if dup:
        raise BCNBLayoutError(f"{path}: duplicated Patient ID {dup[:10]}")
    return df


def _entries(folder: Path) -> list[Path]:
    """A folder's entries without macOS archive litter: `__MACOSX/` and `._*` files."""
    return [p for p in folder.iterdir()
            if p.name != MACOS_FOLDER and not p.name.startswith(MACOS_PREFIX)]


def _find_patch_dir(root: Path) -> Path | None:
    for cand in (root / "paper_patches" / "patches", root / "paper_patches", root / "patches"):
        if cand.is_dir() and any(p.is_dir() for p in _entries(cand)):
            return cand
    return None


def check_layout(root: str | Path, expect_patients: int | None = None) -> BCNBLayout:
    """Inspect a BCNB folder; raise BCNBLayoutError naming what is missing or inconsistent."""
    root = Path(root)
    if not root.is_dir():
        raise BCNBLayoutError(f"{root}: not a folder; download BCNB from "
                              "https://bupt-ai-cz.github.io/BCNB/ and unpack it there")
    clinical = next((root / n for n in CLINICAL_NAMES if (root / n).is_file()), None)
    if clinical is None:
        raise BCNBLayoutError(f"{root}: no {CLINICAL_NAMES[0]} (the BCNB clinical table); "
                              "it ships at the top of the BCNB download")
    df = read_clinical(clinical)
    patients = df["Patient ID"].tolist()
    layout = BCNBLayout(root=root, clinical=clinical, patients=patients,
                        aln_counts=df["ALN status"].value_counts().sort_index().to_dict())
    if expect_patients is not None and len(patients) != expect_patients:
        raise BCNBLayoutError(f"{clinical}: {len(patients)} patients, expected "
                              f"{expect_patients}; is the download complete?")
    known = set(patients)
    wsi_dir = root / "WSIs"
    if wsi_dir.is_dir():
        layout.wsi_dir = wsi_dir
        layout.wsis = sorted(p.stem for p in _entries(wsi_dir)
                             if p.suffix.lower() in IMAGE_SUFFIXES)
        layout.annotated = sorted(p.stem for p in _entries(wsi_dir) if p.suffix == ".json")
        for stem in layout.annotated:
            _check_annotation(wsi_dir / f"{stem}.json")
        unknown = sorted(set(layout.wsis) - known)
        if unknown:
            raise BCNBLayoutError(f"{wsi_dir}: slides {unknown[:10]} have no row in {clinical.name}")
    patch_dir = _find_patch_dir(root)
    if patch_dir is not None:
        layout.patch_dir = patch_dir
        folders = sorted(p for p in _entries(patch_dir) if p.is_dir())
        layout.patch_patients = [p.name for p in folders]
        layout.n_patches = sum(1 for f in folders for q in _entries(f)
                               if q.suffix.lower() in IMAGE_SUFFIXES)
        unknown = sorted(set(layout.patch_patients) - known)
        if unknown:
            raise BCNBLayoutError(f"{patch_dir}: patch folders {unknown[:10]} have no row in "
                                  f"{clinical.name}")
        empty = [f.name for f in folders if not any(q.suffix.lower() in IMAGE_SUFFIXES
                                                    for q in _entries(f))]
        if empty:
            raise BCNBLayoutError(f"{patch_dir}: patch folders {empty[:10]} hold no images")
    if layout.wsi_dir is None and layout.patch_dir is None:
        raise BCNBLayoutError(f"{root}: neither WSIs/ nor paper_patches/ found; unpack the "
                              "BCNB image archives next to the clinical table")
    return layout


def _check_annotation(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
        regions = data["positive"]
        if not regions or not all(len(r["vertices"]) >= 3 for r in regions):
            raise ValueError("'positive' holds no polygon with at least 3 vertices")
    except (ValueError, KeyError, TypeError) as exc:
        raise BCNBLayoutError(f"{path}: not a BALNMP annotation ({exc}); expected "
                              '{"positive": [{"name": ..., "vertices": [[x, y], ...]}], '
                              '"negative": []}') from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the unpacked BCNB folder")
    parser.add_argument("--expect-patients", type=int, default=None,
                        help="fail unless the clinical table has this many patients (1058)")
    args = parser.parse_args(argv)
    try:
        layout = check_layout(args.root, args.expect_patients)
    except BCNBLayoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(layout.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
