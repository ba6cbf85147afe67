"""Patch reading throughput per backend: batched ``read_regions`` vs a per-patch loop.

Writes a synthetic H&E slide (JPEG-tiled SVS, the common case) plus the same image as a big
JPEG and as a folder of pre-cut patches, then, for every backend, reads the same patch grid
both ways in one run and prints patches/s and the ratio. Defaults are small (2-core CI);
``--size 16384 --patches 4000`` approaches a real biopsy.

    python benchmarks/read.py [--size 4096] [--patches 1000] [--patch-size 256] [--workers N]
                              [--order shuffled|grid] [--decode auto|cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from balnmp_cache.slides import Slide, default_workers, open_slide
from balnmp_cache.synthetic import write_pyramidal_tiff
from balnmp_cache.synthetic.render import render_tissue


@dataclass
class Result:
    backend: str
    source: str
    loop_per_s: float
    batched_per_s: float
    ratio: float


def make_sources(root: Path, size: int, patch: int, n: int, seed: int) -> dict[str, Path]:
    """One image, three containers: SVS (JPEG tiles), a big JPEG, a patch folder."""
    rng = np.random.default_rng(seed)
    image = render_tissue(rng, size, size)
    svs = write_pyramidal_tiff(root / "bench.svs", image, mpp=0.5, levels=3, tile=256)
    jpg = root / "bench.jpg"
    Image.fromarray(image).save(jpg, quality=90)
    folder = root / "bench_patches"
    folder.mkdir()
    for x, y in grid(size, patch, n, seed):
        Image.fromarray(image[y : y + patch, x : x + patch]).save(
            folder / f"bench_0_{x}_{y}.jpg", quality=90
        )
    return {"cucim": svs, "openslide": svs, "image": jpg, "patches": folder}


def grid(size: int, patch: int, n: int, seed: int, order: str = "shuffled") -> np.ndarray:
    """``n`` patch corners on the patch grid: ``shuffled`` (defeats tile caches and blocks
    the way a sparse tissue grid does), or ``grid``, the first ``n`` cells row by row (how
    extraction reads a tumour region tiled edge to edge: neighbours share tiles)."""
    cells = size // patch
    xy = np.stack(np.meshgrid(np.arange(cells), np.arange(cells)), -1).reshape(-1, 2) * patch
    if order == "grid":
        return xy[:n].astype(np.int64)
    rng = np.random.default_rng(seed + 1)
    return xy[rng.permutation(len(xy))[:n]].astype(np.int64)


DECODE = {"device": None}  # --decode cpu: cuCIM decodes on the CPU even beside a GPU


def timed(path: Path, backend: str, read: Callable[[Slide], int]) -> float:
    """Patches/s of ``read(slide)`` on a freshly opened slide (no warm patch caches). A JPEG's
    one-off full decode happens before the clock starts."""
    with open_slide(path, backend=backend) as slide:
        if DECODE["device"] and hasattr(slide, "device"):
            slide.device = DECODE["device"]  # the documented way to force CPU decoding
        slide.read_region((0, 0), 0, (1, 1))
        t0 = time.perf_counter()
        count = read(slide)
        return count / (time.perf_counter() - t0)


def bench(path: Path, backend: str, locs: np.ndarray, patch: int, batch: int, workers: int,
          repeats: int) -> Result:  # fmt: skip
    """``repeats`` rounds, each timing the loop then ``read_regions`` back to back; medians
    of the throughputs and of the per-round ratios (a shared machine's load drifts, and a
    round's two runs see the same load)."""

    def loop(slide: Slide) -> int:
        for x, y in locs:
            slide.read_region((int(x), int(y)), 0, (patch, patch))
        return len(locs)

    def batched(slide: Slide) -> int:
        return sum(len(b) for b in slide.read_regions(locs, 0, (patch, patch), batch, workers))

    rounds = np.array([(timed(path, backend, loop), timed(path, backend, batched))
                       for _ in range(repeats)])  # fmt: skip
    return Result(backend, path.name, float(np.median(rounds[:, 0])),
                  float(np.median(rounds[:, 1])), float(np.median(rounds[:, 1] / rounds[:, 0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3072, help="slide side in px (level 0)")
    ap.add_argument("--patches", type=int, default=256, help="patches per measurement")
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--repeats", type=int, default=7,
                    help="rounds (fresh slide each run); medians are reported")
    ap.add_argument("--backends", default="cucim,openslide,image,patches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--order", choices=("shuffled", "grid"), default="shuffled",
                    help="patch order: shuffled cells, or the grid row by row (extraction's)")
    ap.add_argument("--decode", choices=("auto", "cpu"), default="auto",
                    help="cuCIM's decoding device: its own choice (the GPU when there is one) "
                         "or the CPU (blocks)")
    args = ap.parse_args()
    DECODE["device"] = None if args.decode == "auto" else args.decode

    with tempfile.TemporaryDirectory(prefix="balnmp-read-bench-") as tmp:
        sources = make_sources(Path(tmp), args.size, args.patch_size, args.patches, args.seed)
        locs = grid(args.size, args.patch_size, args.patches, args.seed, args.order)
        print(f"slide {args.size}x{args.size}, {len(locs)} patches of {args.patch_size} px "
              f"({args.order}), batch {args.batch_size}, {args.workers} workers, decode "
              f"{args.decode}")  # fmt: skip
        print(f"{'backend':<10} {'source':<18} {'loop p/s':>10} {'batched p/s':>12} "
              f"{'ratio':>7}  (medians of {args.repeats} rounds)")
        for backend in args.backends.split(","):
            r = bench(sources[backend], backend, locs, args.patch_size, args.batch_size,
                      args.workers, args.repeats)  # fmt: skip
            print(f"{r.backend:<10} {r.source:<18} {r.loop_per_s:>10.0f} "
                  f"{r.batched_per_s:>12.0f} {r.ratio:>6.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
