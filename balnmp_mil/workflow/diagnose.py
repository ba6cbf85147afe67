"""What a path given as FEATURES is, when it is not a feature store, and what to do instead.

`not_a_store(path)` tells a table from a slide, a folder of slides, a run directory, an empty
folder, a folder of other files, one slide's feature file and a damaged HDF5 file, and words
the command-line fix for each; `check_store_path` raises it as an `InputError` (exit 2).
`balnmp-mil inspect`, `train`, `cv`, `predict`, `evaluate --features` and `heatmap` all ask it
before opening a store, so each kind of wrong path gets one message everywhere. Stores of
every registered format (per-slide HDF5, Zarr, CLAM and TRIDENT caches, packs) pass; damage
inside a store is the store's to report (`inspect` lists it).
"""

from __future__ import annotations

from pathlib import Path

from balnmp_cache.slides.ids import SLIDE_SUFFIXES, is_slide_folder
from balnmp_cache.store import infer_format
from balnmp_mil.data.tables import TABLE_SUFFIXES
from balnmp_mil.errors import InputError
from balnmp_mil.workflow import rundir

__all__ = ["check_store_path", "not_a_store"]

FEATURE_SUFFIXES = (".h5", ".hdf5", ".zarr")
SHOWN = 3


def _names(paths: list[Path]) -> str:
    names = sorted(p.name for p in paths)
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _is_slide(path: Path) -> bool:
    return path.name.lower().endswith(SLIDE_SUFFIXES)


def _hdf5_file(path: Path) -> str | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "balnmp_pack" in f.attrs or "offsets" in f:
                return None  # a pack
            if "features" in f and "coords" in f:
                return (f"{path} is the feature file of one slide, not a feature store; inspect "
                        f"its folder: balnmp-mil inspect {path.parent}")
    except OSError as exc:
        return (f"{path} cannot be read as HDF5 ({exc}): the file is damaged (a copy cut short, "
                "a full disk); if it is a pack, pack it again with balnmp-mil pack FEATURES "
                f"--out {path} --overwrite")
    return f"{path} is an HDF5 file without bags (no features/coords datasets), not a feature store"


def _file(path: Path) -> str | None:
    import h5py

    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return (f"{path} is a table, not a feature store; label and clinical tables are given "
                "with --labels and --clinical, FEATURES is the --out folder of extract-features")
    if h5py.is_hdf5(path) or suffix in (".h5", ".hdf5"):
        return _hdf5_file(path)
    if _is_slide(path):
        return (f"{path} is a slide, not a feature store; extract its features first: "
                f"extract-features {path} --out FEATURES")
    return (f"{path} is not a feature store (a folder of .h5 files, a .zarr store, a CLAM or "
            "TRIDENT output folder, or a pack file written by balnmp-mil pack)")


def _folder(path: Path) -> str | None:
    if rundir.is_run_dir(path):
        trained_on = rundir.read_config(path / rundir.CONFIG).get("features")
        hint = (f"; it was trained on {trained_on} (balnmp-mil inspect {trained_on})"
                if trained_on else "")
        return f"{path} is a balnmp-mil run directory, not a feature store{hint}"
    if infer_format(path) != "h5":
        return None  # Zarr, CLAM, TRIDENT: their backends know their damage
    children = [c for c in path.iterdir() if not c.name.startswith(".")]
    if any(c.suffix.lower() in FEATURE_SUFFIXES for c in children):
        return None
    if not children:
        return (f"{path} is an empty folder: no feature files yet; extract-features SLIDES "
                f"--out {path} writes them")
    if (path / "manifest.csv").is_file():
        return (f"{path} holds no finished slide yet (its manifest.csv lists what extraction "
                f"did); resume it: extract-features SLIDES --out {path}")
    slides = [c for c in children if (c.is_file() and _is_slide(c))
              or (c.is_dir() and is_slide_folder(c))]
    if slides or is_slide_folder(path):
        return (f"{path} holds slides ({_names(slides) or 'patch images'}) but no feature "
                f"files; extract their features first: extract-features {path} --out FEATURES")
    return (f"{path} holds no feature files (.h5): it has {_names(children)}; FEATURES is the "
            "--out folder of extract-features (or a pack)")


def not_a_store(path: str | Path) -> str | None:
    """Why `path` is not a feature store and what to do, or None when it may be one."""
    path = Path(path)
    if not path.exists():
        return (f"feature store {path} does not exist; run extract-features first, or check "
                "the path")
    return _file(path) if path.is_file() else _folder(path)


def check_store_path(path: str | Path, what: str = "FEATURES") -> None:
    """Raise `InputError` ("FEATURES <why>") when `path` is not a feature store."""
    message = not_a_store(path)
    if message is not None:
        missing = not Path(path).exists()
        raise InputError(message if missing else f"{what} {message}")
