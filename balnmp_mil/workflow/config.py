"""What defines a run: `TrainConfig` (one training run) and `CVConfig` (k-fold CV), their
checks, and how they are read back from a run's `config.yaml` (unknown keys refused by name).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balnmp_mil.errors import InputError

SPLIT_NAMES = ("train", "val", "test")


FIT_OPTIONS = ("epochs", "lr", "weight_decay", "bags_per_step", "instances_per_bag", "patience",
               "monitor", "optimizer", "schedule")


SETTINGS = ("image", "image+clinical", "clinical")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as the run's `config.yaml`."""

    features: str
    labels: str
    task: str | None = None
    model: str = "abmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    clinical: str | None = None
    clinical_variant: str = "full"
    clinical_impute: bool = False
    clinical_only: bool = False
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    bags_per_step: int | None = None
    instances_per_bag: int | None = None
    patience: int | None = None
    monitor: str | None = None
    optimizer: str | None = None
    schedule: str | None = None
    val: float = 0.15
    test: float = 0.2
    splits: str | None = None
    bag_level: str = "patient"
    on_missing: str = "error"
    device: str | None = None
    ci: str = "bootstrap"
    n_bootstrap: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def inputs(self) -> list[tuple[str, str | None]]:
        """The files and folders a run reads: its `--out` may not be, hold or lie inside one."""
        return [("FEATURES", self.features), ("--labels", self.labels),
                ("--clinical", self.clinical), ("--splits", self.splits)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys and missing required ones by name."""
        return config_from_dict(cls, data, source)


def config_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"meta"})
    if unknown:
        raise InputError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options are "
            f"{', '.join(sorted(names))}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        and data.get(f.name) is None
    ]
    if required:
        raise InputError(f"{source}: missing required option(s) {', '.join(required)}")
    values = {k: v for k, v in data.items() if k in names}
    if values.get("model_kwargs") is None:
        values.pop("model_kwargs", None)
    elif not isinstance(values["model_kwargs"], dict):
        raise InputError(f"{source}: model_kwargs must be a mapping of argument: value")
    return cls(**values)


@dataclass
class CVConfig(TrainConfig):
    """A TrainConfig plus the folds, the MIL models and the settings to compare."""

    folds: int = 5
    models: list[str] = field(default_factory=lambda: ["abmil"])
    compare: list[str] | None = None  # None: all three with a clinical table, else image

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> CVConfig:
        return config_from_dict(cls, data, source)

    def settings(self) -> list[str]:
        if self.compare is not None:
            return list(self.compare)
        return list(SETTINGS) if self.clinical is not None else ["image"]


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


def check_inputs(cfg: TrainConfig, need_model: bool = True) -> None:
    """Check paths, task, model and options before any expensive work; errors say what to do."""
    from balnmp_mil.data.labels import TASKS
    from balnmp_mil.models import list_models

    if not Path(cfg.features).exists():
        raise InputError(f"feature store {cfg.features} does not exist; run extract-features first")
    for what, path in (("labels file", cfg.labels), ("clinical table", cfg.clinical),
                       ("splits file", cfg.splits)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist")
    if cfg.task is not None and cfg.task not in TASKS:
        raise InputError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if need_model and not cfg.clinical_only and cfg.model not in list_models():
        raise InputError(f"unknown model {cfg.model!r}; choose one of {', '.join(list_models())}")
    if cfg.clinical_only and cfg.clinical is None:
        raise InputError("--clinical-only needs --clinical TABLE (the clinical data)")
    if cfg.clinical_variant not in ("full", "paper5"):
        raise InputError(f"unknown clinical variant {cfg.clinical_variant!r}; use full or paper5")
    if cfg.on_missing not in ("error", "warn"):
        raise InputError(f"unknown --on-missing {cfg.on_missing!r}; use error or warn")
    if cfg.bag_level not in ("patient", "slide"):
        raise InputError(f"unknown bag level {cfg.bag_level!r}; use patient or slide")
    from balnmp_mil.training.fit import FitConfig

    try:
        FitConfig(**fit_options(cfg))
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad training option: {exc}") from exc
    if not (0 <= cfg.val < 1 and 0 < cfg.test < 1 and cfg.val + cfg.test < 1):
        raise InputError(
            f"--val {cfg.val} and --test {cfg.test} must be fractions with val + test < 1"
        )


def fit_options(cfg: TrainConfig) -> dict[str, Any]:
    """The FitConfig fields this run sets (None keeps FitConfig's default)."""
    return {k: getattr(cfg, k) for k in FIT_OPTIONS if getattr(cfg, k) is not None}


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved: absolute paths and the FitConfig defaults written out."""
    from balnmp_mil.training.fit import FitConfig

    data = cfg.to_dict()
    for key in ("features", "labels", "clinical", "splits"):
        if data[key] is not None:
            data[key] = str(Path(data[key]).resolve())
    defaults = FitConfig()
    for key in FIT_OPTIONS:
        if data[key] is None:
            data[key] = getattr(defaults, key)
    return data
