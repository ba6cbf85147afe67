"""`balnmp-mil paper import`: a released BALNMP checkpoint as a run directory.

The run holds the checkpoint's head as our `balnmp` model (`model.json`, `model.pt`), the
classes of `--task`, and the record of the features it takes (`config.yaml`'s `meta.store`:
the backbone `--encoder`, the checkpoint's sha256 as the weights, the flattened width), so
`predict RUN FEATURES` and `heatmap` accept exactly the features `extract-features --encoder
E --flatten --weights CHECKPOINT` writes. Nothing was trained here: the run has no splits,
predictions or metrics beyond its classes.

A `MILNetWithClinicalData` checkpoint is imported with `clinical=True` (`--clinical`): its
run's clinical encoder is the `official` variant, which reads the five values of the official
`code/dataset/clinical_data/preprocessed-type-K.xlsx` (columns `age`, `tumor_size`,
`is_er_negative`, `is_pr_negative`, `is_her2_negative`, patients by `p_id`) as they are, the
inputs the checkpoint was trained on; `predict RUN FEATURES --clinical THAT_XLSX`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from balnmp_cache._options import Flag, OneOf, Text, check_options, option
from balnmp_cache._version import __version__
from balnmp_mil.data.labels import TASKS
from balnmp_mil.errors import InputError
from balnmp_mil.paper.head import head_from_checkpoint, read_checkpoint, weights_id
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.config import TrainConfig, resolved_config
from balnmp_mil.workflow.steps import positive_class

__all__ = ["ImportOptions", "ImportResult", "import_checkpoint"]

PAPER_ENCODER = "vgg16_bn"  # the paper's backbone (code/train.py --backbone default)


@dataclass(kw_only=True)
class ImportOptions:
    """What `paper import` (and `import_checkpoint`, with these defaults) is told about a
    checkpoint, declared once (`balnmp_cache._options`)."""

    task: str | None = option(None, OneOf(TASKS), help=(
        "The task the checkpoint was trained for (its class names); default: classes 0..C-1."))
    encoder: str = option(PAPER_ENCODER, Text(), help=(
        "The checkpoint's backbone (--encoder of extract-features), recorded so that predict "
        "accepts only features made with it."))
    clinical: bool = option(False, Flag(), help=(
        "The checkpoint is a MILNetWithClinicalData: its run reads the official "
        "preprocessed-type-K.xlsx values as they are (predict --clinical XLSX)."))

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ImportResult:
    """The run written, its model's shape and the record of the features it takes."""

    path: Path
    class_names: list[str]
    in_dim: int
    encoder: str
    weights: str

    def summary(self) -> str:
        return (f"imported {self.encoder} head ({self.in_dim} inputs, classes "
                f"{', '.join(self.class_names)}) -> {self.path}\n"
                f"predict with features from: extract-features SLIDES --out FEATURES "
                f"--encoder {self.encoder} --flatten --weights CHECKPOINT "
                f"(weights {self.weights[:19]}...)")


def _class_names(task: str | None, n_classes: int, checkpoint: Path) -> list[str]:
    if task is None:
        return [str(c) for c in range(n_classes)]
    names = list(TASKS.get(task).class_names)
    if len(names) != n_classes:
        raise InputError(f"checkpoint {checkpoint} has {n_classes} classes but --task {task} "
                         f"has {len(names)} ({', '.join(names)}); pass the task it was "
                         "trained for")
    return names


def _official_encoder(checkpoint: Path, clinical_dim: int, clinical: bool) -> dict | None:
    """The saved `official` clinical encoder of a clinical checkpoint; None for image-only."""
    if clinical_dim and not clinical:
        raise InputError(
            f"checkpoint {checkpoint} is a MILNetWithClinicalData (its classifier takes "
            f"{clinical_dim} clinical values, tiled 10 times); import it with --clinical, then "
            "predict with --clinical code/dataset/clinical_data/preprocessed-type-K.xlsx")
    if not clinical_dim:
        if clinical:
            raise InputError(f"checkpoint {checkpoint} is a MILNetImageOnly (no clinical "
                             "inputs); import it without --clinical")
        return None
    from balnmp_mil.data.clinical import VARIANTS, ClinicalEncoder

    fields = VARIANTS.get("official").fields
    if clinical_dim != len(fields):
        raise InputError(f"checkpoint {checkpoint} takes {clinical_dim} clinical values; the "
                         f"official ones are {len(fields)} ({', '.join(fields)})")
    enc = ClinicalEncoder(variant="official")
    enc.stats_ = {key: {} for key in fields}  # the values are used as they are
    return enc.to_dict()


def import_checkpoint(checkpoint: str | Path, out: str | Path, task: str | None = None,
                      encoder: str = PAPER_ENCODER, overwrite: bool = False,
                      clinical: bool = False) -> ImportResult:
    """Write run `out` from a released BALNMP checkpoint (see module docstring); the options
    are checked as `ImportOptions` (an unknown task is refused before the checkpoint is read)."""
    ImportOptions(task=task, encoder=encoder, clinical=clinical)
    checkpoint = Path(checkpoint)
    out = rundir.check_target(out, overwrite, [("CHECKPOINT", checkpoint)])
    model = head_from_checkpoint(read_checkpoint(checkpoint))
    clinical_encoder = _official_encoder(checkpoint, model.clinical_dim, clinical)
    names = _class_names(task, model.n_classes, checkpoint)
    weights = weights_id(checkpoint)
    record = {"encoder": encoder, "weights": weights, "feature_dim": model.in_dim,
              "target_mpp": None, "patch_size": None}
    imported = f"(none: imported from {checkpoint.resolve()})"
    config = TrainConfig(features=imported, labels=imported, task=task, model="balnmp")
    if clinical_encoder is not None:
        config = dataclasses.replace(config, clinical_variant="official")
    saved = resolved_config(config)
    saved.update(features=imported, labels=imported)
    saved["meta"] = {"balnmp_version": __version__, "run_format": rundir.RUN_FORMAT,
                     "out": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "store": record, "imported": {"checkpoint": str(checkpoint.resolve()),
                                                   "weights": weights}}
    metrics = {"task": task, "model": "balnmp", "class_names": names,
               "positive_class": positive_class(names), "imported": str(checkpoint.resolve())}
    with rundir.staged_run(out, overwrite, [("CHECKPOINT", checkpoint)]) as tmp:
        rundir.write_config(tmp / rundir.CONFIG, saved)
        rundir.save_model(tmp, model)
        rundir.write_json(tmp / rundir.METRICS, metrics)
        if clinical_encoder is not None:
            rundir.write_json(tmp / rundir.CLINICAL_ENCODER, clinical_encoder)
    return ImportResult(Path(out), names, model.in_dim, encoder, weights)
