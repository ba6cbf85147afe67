"""Write a small generated stand-in with the layout of the BCNB download.

    python examples/bcnb/make_standin.py --out /tmp/BCNB --patients 12 --seed 0

BCNB cannot be redistributed, so the recipe is tested on this: synthetic H&E-like biopsies
(balnmp_cache.synthetic) rewritten the way BCNB ships them:

    WSIs/<id>.jpg, WSIs/<id>.json         one-level whole-slide JPEG + BALNMP tumour polygons
    paper_patches/patches/<id>/<id>_<region>_<x>_<y>.jpg
                                          256 px patches cut from each tumour region's
                                          bounding box (x, y inside the region crop), patches
                                          with >= 30 % blank pixels dropped, as the paper did
    patient-clinical-data.xlsx            the BCNB clinical columns, with BCNB's spellings

The clinical values are written the way BCNB's table has them (the sample shown in the
official repository's README, `imgs/clinical-data.png`): `Surgical` is "Axillary lymph node
dissection" or "Sentinel lymph node biopsy", `Ki67` a fraction (0.15), `Histological
grading` blank for some patients, and `ALN status` "N+(＞2)" with a full-width ＞.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from balnmp_cache.synthetic import make_demo_cohort

PATCH = 256
MAX_BLANK = 0.3


def _cut_region_patches(image: np.ndarray, vertices: np.ndarray, pid: str, region: int,
                        out_dir: Path) -> int:
    """Cut the region's bounding box into PATCH tiles (white-padded), keep the non-blank ones."""
    x0, y0 = np.floor(vertices.min(axis=0)).astype(int)
    x1, y1 = np.ceil(vertices.max(axis=0)).astype(int)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    crop = image[y0:y1, x0:x1]
    ph = -(-crop.shape[0] // PATCH) * PATCH
    pw = -(-crop.shape[1] // PATCH) * PATCH
    padded = np.full((ph, pw, 3), 255, np.uint8)
    padded[: crop.shape[0], : crop.shape[1]] = crop
    kept = 0
    for y in range(0, ph, PATCH):
        for x in range(0, pw, PATCH):
            tile = padded[y:y + PATCH, x:x + PATCH]
            blank = np.all(tile >= 235, axis=-1).mean()
            if blank >= MAX_BLANK:
                continue
            Image.fromarray(tile).save(out_dir / f"{pid}_{region}_{x}_{y}.jpg", quality=95)
            kept += 1
    return kept


SURGICAL = ("Axillary lymph node dissection", "Sentinel lymph node biopsy")
BLANK_GRADE = 0.3  # fraction of patients whose `Histological grading` is left blank


def bcnb_spellings(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The synthetic clinical table with BCNB's value spellings (see the module docstring).

    `Surgical` is drawn from the ALN status, as the operation is chosen knowing the nodes:
    axillary dissection for 90 % of N+ patients and 50 % of N0 ones.
    """
    rng = np.random.default_rng(seed + 1)
    table = table.copy()
    positive = (table["ALN status"] != "N0").to_numpy()
    dissection = rng.random(len(table)) < np.where(positive, 0.9, 0.5)
    table["Surgical"] = np.where(dissection, SURGICAL[0], SURGICAL[1])
    table["Ki67"] = table["Ki67"].astype(float) / 100
    grade = table["Histological grading"].astype("object")
    grade[rng.random(len(table)) < BLANK_GRADE] = None
    table["Histological grading"] = grade
    table["ALN status"] = table["ALN status"].str.replace(">", "\uff1e")
    return table


def make_standin(out: str | Path, patients: int = 12, seed: int = 0) -> Path:
    """Write the stand-in to ``out`` (must not exist or be empty) and return it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} exists and is not empty; choose a new folder")
    with tempfile.TemporaryDirectory(prefix="bcnb-standin-") as tmp:
        cohort = make_demo_cohort(Path(tmp) / "cohort", n_patients=patients, seed=seed,
                                  width=2048, height=1024, levels=2)
        wsi_dir = out / "WSIs"
        wsi_dir.mkdir(parents=True)
        for row in cohort.patients.itertuples():
            pid = row.patient_id
            image = tifffile.imread(row.slide_path, level=0)
            Image.fromarray(image).save(wsi_dir / f"{pid}.jpg", quality=90)
            shutil.copy(row.annotation_path, wsi_dir / f"{pid}.json")
            patch_dir = out / "paper_patches" / "patches" / pid
            patch_dir.mkdir(parents=True)
            ann = json.loads(Path(row.annotation_path).read_text())
            for region, poly in enumerate(ann["positive"]):
                _cut_region_patches(image, np.asarray(poly["vertices"], float), pid, region,
                                    patch_dir)
        table = bcnb_spellings(pd.read_csv(cohort.clinical_csv), seed)
        table.to_excel(out / "patient-clinical-data.xlsx", index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a BCNB-layout stand-in cohort.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_standin(args.out, args.patients, args.seed)
    print(f"wrote a BCNB-layout stand-in of {args.patients} patients to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
