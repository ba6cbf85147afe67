"""Extract patch embeddings from one slide with the library, step by step.

    python examples/extract_one_slide.py SLIDE [--annotations DIR] --out features \
        [--encoder resnet50] [--weights imagenet|none|PATH] [--mpp 0.5] [--device cuda]

Without SLIDE, a small synthetic Aperio-style slide (with its tumour annotation) is generated
first, so the example runs offline in seconds:

    python examples/extract_one_slide.py --out /tmp/one-slide --weights none --input-size 32

What it shows: open_slide (which reader, µm/px), tile_slide (the patch grid that will be
encoded), extract_features (the store file, resumable, atomic) and FeatureStore (reading the
bag back). The command-line equivalent is `extract-features SLIDE --out DIR ...`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from balnmp_cache import FeatureStore, extract_features, open_slide, tile_slide


def demo_slide(workdir: Path) -> tuple[Path, Path]:
    """Generate one synthetic slide + annotation folder (no download needed)."""
    from balnmp_cache.synthetic import make_demo_cohort

    cohort = make_demo_cohort(workdir / "cohort", n_patients=1, seed=0, width=1024, height=512,
                              tumour_patches=(4, 6))
    return cohort.slides_dir / "1.svs", cohort.annotations_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Extract one slide's patch embeddings.")
    p.add_argument("slide", nargs="?", help="slide file (default: a generated demo slide)")
    p.add_argument("--annotations", help="folder of <slide_id>.json / .geojson tumour outlines")
    p.add_argument("--out", required=True, help="feature store folder")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH")
    p.add_argument("--mpp", type=float, default=0.5, help="target µm/px (0.5 ≈ 20x)")
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--input-size", type=int, default=None, help="resize for the encoder")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="balnmp-example-") as tmp:
        if args.slide:
            slide_path, annotations = Path(args.slide), args.annotations
        else:
            slide_path, annotations = demo_slide(Path(tmp))

        # 1. Open the slide: the reader is chosen safely (cuCIM only for TIFFs it reads well).
        with open_slide(slide_path) as slide:
            slide_id = slide.slide_id
            print(f"{slide.slide_id}: {slide.dimensions[0]} x {slide.dimensions[1]} px, "
                  f"{slide.level_count} level(s), {slide.mpp} µm/px, read by {slide.backend}")
            # 2. The patch grid at the target µm/px; inside the tumour outline when given.
            ann = None
            if annotations is not None:
                from balnmp_cache.tiling.annotations import find_annotation

                ann = find_annotation(annotations, slide.slide_id)
            grid = tile_slide(slide, patch_size=args.patch_size, mpp=args.mpp, annotations=ann)
            print(f"grid: {len(grid)} patches of {grid.plan.patch_size_level0} level-0 px "
                  f"read at level {grid.plan.level}")

        # 3. Encode: one <slide_id>.h5 appears in --out when complete (rerunning skips it).
        summary = extract_features([slide_path], args.out, encoder=args.encoder,
                                   weights=args.weights, mpp=args.mpp,
                                   patch_size=args.patch_size, annotations=annotations,
                                   device=args.device, input_size=args.input_size)
        print(summary.format())
        if summary.n_failed:
            return 1

    # 4. Read the bag back: features (N, D), coords (N, 2) and the provenance attributes.
    store = FeatureStore(args.out)
    bag = store[slide_id]
    print(f"bag {bag.slide_id}: features {bag.features.shape} {bag.features.dtype}, "
          f"encoder {bag.attrs.get('encoder')}, {bag.attrs.get('target_mpp')} µm/px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
