"""What defines a run: `TrainConfig` (one training run) and `CVConfig` (k-fold CV).

Each option is declared once, as a field with its help, default and allowed values
(`balnmp_cache._options`): the `train`/`cv` click options, the keys of a run's `config.yaml`
(unknown keys refused by name) and the Python keywords all derive from these fields. A
`TrainConfig` is a `FitConfig` too, so every training option is a run option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from balnmp_cache._options import (
    Constraint,
    Flag,
    Interval,
    ListOf,
    Mapping,
    OneOf,
    Text,
    check_options,
    option,
    option_fields,
)
from balnmp_cache.errors import OptionError
from balnmp_mil.data.clinical import DEFAULT_VARIANT, VARIANTS
from balnmp_mil.data.cohort import ON_MISSING
from balnmp_mil.data.labels import TASKS
from balnmp_mil.data.layout import BAG_LEVELS
from balnmp_mil.errors import InputError
from balnmp_mil.evaluation.metrics import CI_METHODS
from balnmp_mil.models import MODELS
from balnmp_mil.training.config import FitConfig
from balnmp_mil.training.protocol import apply_protocol

__all__ = ["SETTINGS", "SPLIT_NAMES", "CVConfig", "TrainConfig",
           "fit_options", "resolve_device", "resolved_config", "run_fields"]

SPLIT_NAMES = ("train", "val", "test")
SETTINGS = ("image", "image+clinical", "clinical")
FIT_FIELDS = tuple(f.name for f in dataclasses.fields(FitConfig))
PATH_FIELDS = ("features", "labels", "clinical", "splits", "bags")
# Consent given to one command (and asked again by the next): not written to config.yaml.
NOT_SAVED = ("allow_store_mismatch",)

C = TypeVar("C", bound="TrainConfig")


def parse_pair(pair: str) -> tuple[str, Any]:
    """`"embed_dim=128"` -> `("embed_dim", 128)`; the value is read as YAML (`gated=false`)."""
    import yaml

    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise InputError(f"{pair!r}: expected KEY=VALUE, e.g. embed_dim=128")
    return key.strip(), yaml.safe_load(value)


class ClassName(Constraint):
    """A class of the `label` column: its name, or a YAML number or boolean read as the table
    writes it (`1`, `True`)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if isinstance(value, (bool, int)):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise self.refuse(value, name, flag, "must be a class of the label column, e.g. 1 or "
                          "positive")

    def metavar(self) -> str:
        return "CLASS"


@dataclass(kw_only=True)
class TrainConfig(FitConfig):
    """Everything that defines a training run; saved as the run's `config.yaml`."""

    features: str = option(check=Text(), argument=True, path=True,
                           help="Feature store or pack (extract-features --out).")
    labels: str = option(check=Text(), path=True, help=(
        "Labels CSV/XLSX: patient_id (or BCNB `Patient ID`) and `label` or `ALN status`; "
        "optional slide_id column."))
    clinical: str | None = option(None, check=Text(), path=True,
                                  help="Clinical table (BCNB columns); may be the labels file.")
    clinical_variant: str = option(DEFAULT_VARIANT, check=OneOf(VARIANTS), help=(
        "Clinical encoding: the paper's 5 features (paper5), every BCNB column (full), or "
        "the official preprocessed-type-K.xlsx values as they are (official)."))
    clinical_impute: bool = option(False, check=Flag(), help=(
        "Fill missing clinical values with training medians / modes instead of failing."))
    clinical_columns: dict[str, str] = option(
        check=Mapping(), factory=dict, flag="--clinical-column", multiple=True,
        metavar="FIELD=COLUMN", parse=parse_pair, default_text="found by name",
        help="Clinical table column of a field (repeatable), e.g. age='Patient age'.")
    task: str | None = option(None, check=OneOf(TASKS), default_text="the `label` column as is",
                              help="ALN task of the BALNMP paper.")
    positive: str | None = option(None, check=ClassName(), default_text=(
        "1, True or a name such as positive, yes, N+; BCNB tasks: N+"), help=(
        "The positive class of a binary `label` column (one of its two values)."))
    model: str = option("abmil", check=OneOf(MODELS), commands=("train",),
                        help="Registered MIL model.")
    model_kwargs: dict[str, Any] = option(
        check=Mapping(), factory=dict, flag="--model-arg", multiple=True, metavar="KEY=VALUE",
        parse=parse_pair, default_text="the model's",
        help="Extra build_model argument (repeatable), e.g. embed_dim=128.")
    clinical_only: bool = option(False, check=Flag(), commands=("train",), help=(
        "Fit the clinical-only logistic-regression baseline instead of a MIL model."))
    bag_level: str = option("patient", check=OneOf(BAG_LEVELS),
                            help="One bag per patient or per slide.")
    on_missing: str = option("error", check=OneOf(ON_MISSING, "policy"), help=(
        "Labelled slides absent from FEATURES: fail (error) or skip with a warning (warn)."))
    allow_mixed: bool = option(False, check=Flag(), help=(
        "Combine slides of different encoders, weights or µm/px in one cohort."))
    allow_store_mismatch: bool = option(False, check=Flag(), help=(
        "Go on although FEATURES has another encoder, weights, µm/px or patch size than the "
        "run (applied, or whose --config is reused) was trained on; never saved with a run."))
    val: float = option(0.15, check=Interval(float, 0, 1, closed="left"),
                        help="Validation fraction of patients.")
    test: float = option(0.2, check=Interval(float, 0, 1, closed="neither"),
                         commands=("train",), help="Test fraction of patients.")
    splits: str | None = option(None, check=Text(), path=True, commands=("train",), help=(
        "Reuse a saved split (splits.json of an earlier run)."))
    bags: str | None = option(None, check=Text(), path=True, default_text="none", help=(
        "Train and evaluate on fixed bags (the paper's: `balnmp-mil paper splits` writes "
        "DIR/<task>.bags.json), found in FEATURES by their patch file names: each bag is "
        "one sample per epoch, a patient's score merges its bags (--merge). train: the "
        "file's split is the run's unless --splits (which must agree); cv: folds of its "
        "patients."))
    ci: str = option("bootstrap", check=OneOf(CI_METHODS), help="AUC CI method.")
    n_bootstrap: int = option(1000, check=Interval(int, 1),
                              help="Bootstrap resamples for the AUC CI.")

    def __post_init__(self) -> None:
        apply_protocol(self)  # as FitConfig does: a --protocol sets the options left default
        check_options(self)
        if self.clinical_only and self.clinical is None:
            raise InputError("--clinical-only needs --clinical TABLE (the clinical data)")
        if self.bags is not None and self.bag_level != "patient":
            raise InputError(f"--bags makes the bags; leave --bag-level at patient (not "
                             f"{self.bag_level})")
        if self.bags is not None and self.instances_per_bag is not None:
            raise InputError("--bags trains on each fixed bag whole; leave out "
                             f"--instances-per-bag {self.instances_per_bag}")
        if not self.val + self.test < 1:
            raise InputError(
                f"--val {self.val} and --test {self.test} must be fractions with val + test < 1"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data, run options first, then the training options."""
        data = dataclasses.asdict(self)
        return {f.name: data[f.name] for f in run_fields(type(self))}

    def inputs(self) -> list[tuple[str, str | None]]:
        """The files and folders a run reads: its `--out` may not be, hold or lie inside one."""
        return [("FEATURES", self.features), ("--labels", self.labels),
                ("--clinical", self.clinical), ("--splits", self.splits),
                ("--bags", self.bags)]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        """Build from a mapping, rejecting unknown keys and missing required ones by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"meta"})
        if unknown:
            raise InputError(f"{source}: unknown option(s) {', '.join(unknown)}; valid options "
                             f"are {', '.join(sorted(names))}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING and data.get(f.name) is None]
        if required:
            raise InputError(f"{source}: missing required option(s) {', '.join(required)}")
        values = {k: v for k, v in data.items() if k in names}
        for key in ("model_kwargs", "clinical_columns"):  # null in YAML: the default
            if values.get(key, ...) is None:
                del values[key]
        try:
            return cls(**values)
        except (InputError, OptionError) as exc:
            if source == "command line":
                raise
            raise InputError(f"{source}: {exc}") from exc


@dataclass(kw_only=True)
class CVConfig(TrainConfig):
    """A TrainConfig plus the folds, the MIL models and the settings to compare."""

    folds: int = option(5, check=Interval(int, 2), help="Number of folds.")
    models: list[str] = option(check=ListOf(OneOf(MODELS)), factory=lambda: ["abmil"],
                               help="Comma-separated MIL models.")
    compare: list[str] | None = option(
        None, check=ListOf(OneOf(SETTINGS, "setting")),
        default_text="all three with --clinical, else image",
        help="Comma-separated settings among image, image+clinical, clinical.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for setting in self.settings():
            if "clinical" in setting and self.clinical is None:
                raise InputError(f"--compare {setting} needs --clinical TABLE")

    def settings(self) -> list[str]:
        if self.compare is not None:
            return list(self.compare)
        return list(SETTINGS) if self.clinical is not None else ["image"]


def run_fields(cls: type[TrainConfig]) -> list[dataclasses.Field[Any]]:
    """A run config's declared fields: its own first (in declaration order), then FitConfig's."""
    fields = option_fields(cls)
    return ([f for f in fields if f.name not in FIT_FIELDS]
            + [f for f in fields if f.name in FIT_FIELDS])


def resolve_device(device: str | None) -> str:
    """The given torch device, or cuda when available; a CUDA device that is absent is an
    input error (e.g. a config.yaml from a GPU node reused on a laptop)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA device is available; "
                         "pass --device cpu")
    return str(device)


def fit_options(cfg: TrainConfig) -> dict[str, Any]:
    """The FitConfig fields of a run config, as `fit` keywords."""
    return {name: getattr(cfg, name) for name in FIT_FIELDS}


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved in `config.yaml`: every option, with absolute paths."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in NOT_SAVED}
    for key in PATH_FIELDS:
        if data.get(key) is not None:
            data[key] = str(Path(data[key]).resolve())
    return data
