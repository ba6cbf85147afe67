"""`balnmp-mil heatmap`: a saved run's attention on one slide, over its thumbnail.

This is the only code of balnmp_mil that reads a slide. `balnmp_cache.slides.open_slide` is
imported lazily inside `heatmap_run`, so `import balnmp_mil` (and every other command) never
loads slide readers (cuCIM, OpenSlide). SLIDE may be any file `open_slide` reads, including a
plain JPEG/PNG thumbnail of the slide at level-0 size or smaller (pass `mpp` then if known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of
from balnmp_cache.store._atomic import check_output
from balnmp_mil.errors import InputError
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.apply import check_run_store, clinical_matrix
from balnmp_mil.workflow.diagnose import check_store_path

if TYPE_CHECKING:
    from balnmp_mil.models import MILModel

GALLERY_PX = 256  # target side of a gallery patch, in pixels


@dataclass
class HeatmapResult:
    """The PNG written, the slide, how many patches, and the run's class probabilities."""

    path: Path
    slide_id: str
    n_patches: int
    probabilities: dict[str, float]

    def summary(self) -> str:
        probs = ", ".join(f"p({k})={v:.3f}" for k, v in self.probabilities.items())
        return f"{self.slide_id}: {self.n_patches} patches, {probs} -> {self.path}"


def bag_attention(model: MILModel, features: np.ndarray, clinical: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(attention (N,), class probabilities (C,)) of one bag through `model.forward_bag`."""
    import torch

    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    clin = None if clinical is None else torch.from_numpy(np.asarray(clinical, np.float32))
    with torch.no_grad():
        out = model.eval().forward_bag(x, clinical=clin)
    probs = torch.softmax(out.logits.float(), dim=-1).reshape(-1).numpy()
    if out.attention is None:
        raise InputError(f"model {model.config.get('name')!r} has no attention (e.g. mean or "
                         "max pooling); draw heatmaps of an attention model such as abmil")
    att = out.attention.float().cpu().numpy()
    if att.ndim == 2:  # one attention branch per class: show the predicted class's
        att = att[:, int(probs.argmax())] if att.shape[1] == probs.size else att.mean(axis=1)
    return att.reshape(-1), probs


def patch_footprint(attrs: dict, coords: np.ndarray, where: str,
                    patch_size_level0: float | None = None) -> float:
    """The level-0 side of the bag's patches: `patch_size_level0` if given, else the store's
    (a CLAM cache records it only in CLAM's `patches/`). Refuses, never guesses, when the
    footprint or the coordinates are unknown."""
    if (coords < 0).any():
        raise InputError(
            f"{where} has no patch coordinates (a CLAM pt_files cache stores none), so there is "
            "nothing to place on the slide; point --features at a CLAM folder that also holds "
            "h5_files/ or CLAM's patches/ (create_patches_fp.py output)")
    size0 = attrs.get("patch_size_level0") if patch_size_level0 is None else patch_size_level0
    if size0 is None:
        raise InputError(
            f"{where} does not record the size of its patches in level-0 pixels "
            "(`patch_size_level0`; CLAM's h5_files and pt_files carry none); pass "
            "--patch-size-level0 PX, or put CLAM's patches/ folder (create_patches_fp.py "
            "output) beside h5_files/ in --features")
    if not float(size0) > 0:
        raise InputError(f"--patch-size-level0 must be a positive number of pixels, got {size0}")
    return float(size0)


def heatmap_run(run_path: str | Path, slide: str | Path, out: str | Path,
                features: str | Path | None = None, patient: str | None = None,
                clinical: str | Path | None = None, top_k: int = 8,
                thumbnail_size: int = 2048, backend: str = "auto",
                mpp: float | None = None, patch_size_level0: float | None = None,
                allow_store_mismatch: bool = False) -> HeatmapResult:
    """Draw the attention of run `run_path` on SLIDE's bag (from FEATURES or the run's store,
    checked against the store the run was trained on unless `allow_store_mismatch`);
    `patch_size_level0` supplies the patch side when the store does not record it."""
    from balnmp_cache.store import load_bags
    from balnmp_mil.data.provenance import store_record
    from balnmp_mil.evaluation.plots import plot_attention_heatmap

    run = rundir.load_run(run_path, device="cpu")
    check_output(out, [("RUN", run_path), ("SLIDE", slide), ("--features", features),
                       ("--clinical", clinical)], InputError)
    if run.model is None:
        raise InputError(f"run {run.path} is a clinical-only model; it has no attention to draw")
    slide = Path(slide)
    if not slide.exists():
        raise InputError(f"slide {slide} does not exist")
    sid = slide_id_of(slide)
    store = features or run.config.get("features")
    if store is None or not Path(store).exists():
        raise InputError(f"feature store {store} does not exist; pass --features")
    check_store_path(store)
    packed = load_bags(store, slide_ids=[sid])
    check_run_store(run, store_record(packed.attrs, np.asarray(packed.features).shape[1]),
                    store, allow_store_mismatch)
    coords = np.asarray(packed.coords).reshape(-1, 2)
    if coords.shape[0] == 0:
        raise InputError(f"slide {sid} has no patches in {store}; nothing to draw")
    size0 = patch_footprint(packed.attrs[0] if packed.attrs else {}, coords,
                            f"slide {sid} in {store}", patch_size_level0)
    clin = None
    if run.clinical_encoder is not None:
        table = clinical or run.config.get("clinical")
        if table is None:
            raise InputError(f"run {run.path} uses clinical data; pass --clinical TABLE")
        clin = clinical_matrix(run.clinical_encoder, table, [patient or sid])
    att, probs = bag_attention(run.model, np.asarray(packed.features), clin)

    from balnmp_cache.slides.registry import (
        open_slide,  # lazy: the one slide reader use in balnmp_mil
    )

    top = np.argsort(-att, kind="mergesort")[: int(min(top_k, att.size))]
    with open_slide(slide, backend=backend, mpp=mpp) as reader:
        thumb = reader.thumbnail(thumbnail_size)
        downsample = reader.dimensions[0] / thumb.shape[1]
        level = reader.get_best_level_for_downsample(max(size0 / GALLERY_PX, 1.0))
        side = max(1, int(round(size0 / reader.level_downsamples[level])))
        patches = [reader.read_region((int(coords[i, 0]), int(coords[i, 1])), level,
                                      (side, side)) for i in top]
        slide_mpp = reader.mpp
    names = run.class_names or [str(c) for c in range(probs.size)]
    label = names[-1] if len(names) == 2 else names[int(probs.argmax())]
    p = probs[-1] if len(names) == 2 else probs.max()
    title = (f"{sid} · {run.model_config.get('name')} attention · p({label}) = {p:.2f}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    plot_attention_heatmap(thumb, coords, att, size0, downsample, out, top_k=top_k,
                           patches=patches, mpp=slide_mpp, title=title)
    return HeatmapResult(Path(out), sid, int(att.size),
                         {n: float(v) for n, v in zip(names, probs)})
