"""`extract-features`: slides -> per-slide feature store (see docs/cli.md, docs/cluster.md).

Exit status: 0 all slides done (or skipped), 1 some slides failed (listed), 2 bad usage or
bad input (a message naming the file or option).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from balnmp_cache._version import __version__


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from balnmp_cache.extract.sharding import parse_shard

    try:
        parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    return value


def _weights(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("imagenet", "none") or Path(value).is_file():
        return value
    raise click.BadParameter(f"{value!r} is neither 'imagenet', 'none' nor an existing file")


@click.command(
    "extract-features",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument(
    "slides", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Feature store folder (one <slide_id>.h5 per slide) or a .zarr store.")
@click.option("--encoder", default="resnet50", show_default=True,
              help="Registered encoder name (see docs/extraction.md) or timm:<model>.")
@click.option("--weights", default="imagenet", show_default=True, callback=_weights,
              help="imagenet | none (seeded random init) | PATH to a local checkpoint.")
@click.option("--mpp", type=float, default=0.5, show_default=True,
              help="Target resolution in µm/px (0.5 ≈ 20x).")
@click.option("--patch-size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Patch side in pixels at the target µm/px.")
@click.option("--annotations", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of <slide_id>.json (BALNMP) or .geojson (QuPath): tile inside them.")
@click.option("--allow-unannotated", is_flag=True,
              help="With --annotations: tile all tissue of slides that have no annotation.")
@click.option("--format", "fmt", type=click.Choice(["h5", "zarr"]), default="h5",
              show_default=True)
@click.option("--device", default=None, help="cuda, cuda:1 or cpu [default: cuda if present].")
@click.option("--devices", default=None,
              help="One worker per GPU on this node, e.g. 0,1,2,3 (overrides --device).")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Autocast precision [default: bf16 on cuda, fp32 on cpu].")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Reader threads [default: the slide backend's choice].")
@click.option("--shard", callback=_shard, default=None,
              help="Process shard I of N (0-based), e.g. 0/4 [default: from "
                   "SLURM_ARRAY_TASK_ID/COUNT when set, else all].")
@click.option("--skip-errors", is_flag=True,
              help="Record failing slides in manifest.csv and go on (exit status 1 at the end).")
@click.option("--overwrite", is_flag=True, help="Re-extract slides that are already finished.")
@click.option("--level", type=click.IntRange(min=0), default=None,
              help="Read this pyramid level instead of choosing one for --mpp.")
@click.option("--min-tissue", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Minimum tissue fraction of a patch.")
@click.option("--tissue", type=click.Choice(["biopsy", "resection"]), default="biopsy",
              show_default=True, help="Tissue-detection preset.")
@click.option("--backend", type=click.Choice(["auto", "cucim", "openslide", "image", "patches"]),
              default="auto", show_default=True, help="Slide reader.")
@click.option("--mpp-overrides", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with slide_id,mpp for slides whose files lack (or misstate) µm/px.")
@click.option("--qc", "qc_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write a QC thumbnail (tissue mask + patch grid) per slide here.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random-init seed for --weights none.")
@click.option("--flatten", is_flag=True,
              help="VGG/AlexNet: the flattened conv map (25,088-d for VGG16) instead of "
                   "global average pooling.")
@click.option("--input-size", type=click.IntRange(min=16), default=None,
              help="Resize patches to this side for the encoder [default: its native size, "
                   "e.g. 224; CNNs accept any size].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True, help="Stored feature dtype.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar [default: only on a terminal].")
@click.version_option(__version__, prog_name="extract-features")
def main(slides: tuple[Path, ...], out: Path, encoder: str, weights: str, mpp: float,
         patch_size: int, annotations: Path | None, allow_unannotated: bool, fmt: str,
         device: str | None, devices: str | None, precision: str | None, batch_size: int,
         num_workers: int | None, shard: str | None, skip_errors: bool, overwrite: bool,
         level: int | None, min_tissue: float, tissue: str, backend: str,
         mpp_overrides: Path | None, qc_dir: Path | None, seed: int, flatten: bool,
         input_size: int | None, dtype: str, progress: bool | None) -> None:  # fmt: skip
    """Encode every slide in SLIDE_OR_DIR... into per-slide patch embeddings under --out.

    Resumable: finished slides are skipped; several jobs (or a SLURM array) may share --out.
    """
    from balnmp_cache.encoders import EncoderError
    from balnmp_cache.extract import ExtractError, SlideFailure, extract_features

    try:
        summary = extract_features(
            list(slides), out, encoder=encoder, weights=weights, mpp=mpp, patch_size=patch_size,
            format=fmt, device=device, batch_size=batch_size, annotations=annotations,
            num_workers=num_workers, precision=precision, shard=shard, skip_errors=skip_errors,
            overwrite=overwrite, min_tissue=min_tissue, level=level, qc_dir=qc_dir,
            allow_unannotated=allow_unannotated, mpp_overrides=mpp_overrides, backend=backend,
            tissue=tissue, progress=progress, devices=devices, seed=seed, flatten=flatten,
            dtype=dtype, input_size=input_size,
        )  # fmt: skip
    except (ExtractError, EncoderError) as exc:
        raise click.UsageError(str(exc)) from exc
    except SlideFailure as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(summary.format())
    if summary.n_failed:
        names = ", ".join(r.slide_id for r in summary.failed)
        click.echo(f"{summary.n_failed} slide(s) failed: {names} (see {out}/manifest.csv)",
                   err=True)  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    main()
