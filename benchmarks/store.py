"""Pack vs per-slide load: seconds, GB/s and the ratio, measured in one run on one machine.

Builds a BCNB-sized cohort (1,058 slides, ~170,000 patches x 1,024 float16 features; about
350 MB) with the store writer, packs it, then times `load_bags` on the pack and on the
per-slide HDF5 files (best of --repeats, page cache warm). Targets: pack >= 1 GB/s and
>= 5x faster than per-slide files.

    python benchmarks/store.py              # --scale 0.1 (quick)
    python benchmarks/store.py --full       # the full BCNB-sized cohort
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from balnmp_cache.store import FeatureStore, load_bags
from balnmp_cache.store.pack import pack_store

SLIDES, PATCHES, DIM = 1058, 170_000, 1024


def build(root: Path, n_slides: int, n_patches: int, dim: int, dtype: str, seed: int) -> int:
    """Per-slide store with log-normal bag sizes summing to ~n_patches; returns bytes."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0.0, 0.8, n_slides)
    sizes = np.maximum(1, np.round(sizes / sizes.sum() * n_patches)).astype(int)
    store = FeatureStore(root, mode="a", format="h5")
    base = rng.normal(size=(int(sizes.max()), dim)).astype(dtype)
    for k, n in enumerate(sizes):
        with store.writer(f"{k + 1}", dim, dtype=dtype,
                          attrs={"encoder": "resnet50", "target_mpp": 0.5}) as w:  # fmt: skip
            w.append(np.roll(base[:n], k, axis=1), rng.integers(0, 10**5, (n, 2)))
    return int(sizes.sum()) * (dim * np.dtype(dtype).itemsize + 16)


def best(fn, repeats: int) -> float:
    fn()  # warm the page cache and imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="fraction of slides and patches")
    ap.add_argument("--full", action="store_true", help="scale 1.0: 1,058 slides, 170k patches")
    ap.add_argument("--dim", type=int, default=DIM)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, removed")
    ap.add_argument("--reuse", action="store_true", help="reuse --workdir's per-slide store")
    args = ap.parse_args()
    scale = 1.0 if args.full else args.scale
    n_slides, n_patches = max(2, round(SLIDES * scale)), max(2, round(PATCHES * scale))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="balnmp-bench-"))
    try:
        t = time.perf_counter()
        reused = args.reuse and (work / "features").is_dir()
        if reused:
            n = load_bags(work / "features").features.shape[0]
            nbytes = n * (args.dim * np.dtype(args.dtype).itemsize + 16)
        else:
            nbytes = build(work / "features", n_slides, n_patches, args.dim, args.dtype, seed=0)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        tracemalloc.start()
        pack = pack_store(work / "features", work / "cohort.h5", overwrite=True)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t_pack_write = time.perf_counter() - t
        zpack = pack_store(work / "features", work / "cohort.zarr", format="zarr", overwrite=True)
        a, b = load_bags(pack), load_bags(work / "features")
        assert np.array_equal(a.features, b.features) and np.array_equal(a.offsets, b.offsets)
        t_pack = best(lambda: load_bags(pack), args.repeats)
        t_zarr = best(lambda: load_bags(zpack), args.repeats)
        t_files = best(lambda: load_bags(work / "features"), args.repeats)
        t_raw = best(lambda: _raw_read(pack), args.repeats)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    gb = nbytes / 1e9
    print(f"cohort: {n_slides} slides, {len(a.features)} patches x {args.dim} {args.dtype} "
          f"= {gb:.3f} GB (features + coords); {'reused' if reused else 'built'} in "
          f"{t_build:.1f} s, packed in "
          f"{t_pack_write:.1f} s (peak traced memory while packing {peak / 1e6:.1f} MB)")
    print(f"load_bags(pack .h5):       {t_pack:.3f} s  {gb / t_pack:.2f} GB/s")
    print(f"load_bags(pack .zarr):     {t_zarr:.3f} s  {gb / t_zarr:.2f} GB/s")
    print(f"load_bags(per-slide .h5):  {t_files:.3f} s  {gb / t_files:.2f} GB/s")
    print(f"raw h5py read of the pack: {t_raw:.3f} s  {gb / t_raw:.2f} GB/s (no validation)")
    print(f"ratio per-slide / pack:    {t_files / t_pack:.1f}x  (target >= 5x; pack target "
          ">= 1 GB/s)")


def _raw_read(path: Path) -> None:
    import h5py

    with h5py.File(path) as f:
        f["features"][()]
        f["coords"][()]


if __name__ == "__main__":
    main()
