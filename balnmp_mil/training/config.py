"""`FitConfig`: the training options, each declared once (help, default, allowed values).

`fit(**options)`, the `train`/`cv` command-line options, `config.yaml` keys and the
scikit-learn wrapper's parameters all derive from these fields (see `balnmp_cache._options`).
Choices are the registries' names, read when checked: `--optimizer` and `--schedule` from
`balnmp_mil.training.optim`, `--monitor` from `balnmp_mil.training.monitor`, `--merge` from
`balnmp_mil.training.inference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from balnmp_cache._options import Constraint, Flag, Interval, OneOf, Text, check_options, option
from balnmp_cache.errors import OptionError
from balnmp_mil.models import MILModel
from balnmp_mil.training.inference import MERGES
from balnmp_mil.training.monitor import MONITORS
from balnmp_mil.training.optim import OPTIMIZERS, SCHEDULES
from balnmp_mil.training.protocol import PROTOCOLS, apply_protocol

__all__ = ["AUTO", "AUTO_MAX_BAGS_PER_STEP", "AUTO_MIN_STEPS", "BagsPerStep", "ClassWeights",
           "FitConfig", "resolve_bags_per_step"]

AUTO = "auto"
# The "auto" rule, measured by benchmarks/mil_accuracy.py (docs/models.md, "Bags per step"):
# an epoch keeps at least AUTO_MIN_STEPS optimiser steps, and a step packs at most
# AUTO_MAX_BAGS_PER_STEP bags (where the CPU speed-up over one bag per step comes from).
AUTO_MIN_STEPS = 64
AUTO_MAX_BAGS_PER_STEP = 8


def resolve_bags_per_step(value: int | str, n_bags: int) -> int:
    """Bags per optimiser step for `n_bags` training bags: an explicit number as given;
    "auto": `n_bags // AUTO_MIN_STEPS`, between 1 and `AUTO_MAX_BAGS_PER_STEP`."""
    if value != AUTO:
        return int(value)
    return max(1, min(AUTO_MAX_BAGS_PER_STEP, n_bags // AUTO_MIN_STEPS))


class ClassWeights(Constraint):
    """Class weights: "balanced", None, or one non-negative weight per class."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if value == "balanced":
            return value
        if isinstance(value, (list, tuple)) and value:
            weights = [Interval(float, 0).convert(v, name, flag) for v in value]
            return [float(w) for w in weights]  # type: ignore[arg-type]  # floats, checked
        raise self.refuse(value, name, flag, "must be balanced, none or comma-separated weights "
                           "(one per class, e.g. 1,2.5)")

    def metavar(self) -> str:
        return "balanced|none|W1,W2,..."


class BagsPerStep(Constraint):
    """Bags per optimiser step: "auto" (chosen from the number of training bags by
    `balnmp_mil.training.plan.resolve_bags_per_step`) or an integer >= 1."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        try:
            return Interval(int, 1).convert(value, name, flag)
        except OptionError:
            raise self.refuse(value, name, flag, "must be auto or an integer >= 1") from None

    def metavar(self) -> str:
        return "auto|INTEGER"


def parse_class_weights(text: str) -> object:
    """Command-line `--class-weights`: 'balanced', 'none' or '1,2.5'."""
    if text.strip().lower() in ("none", "null"):
        return None
    if text.strip() == "balanced":
        return "balanced"
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass
class FitConfig:
    """Training options of `fit` (see docs/models.md)."""

    seed: int = option(0, check=Interval(int, 0), help=(
        "Seed: dropout, shuffling and subsampling draw from it (train and cv also seed the "
        "split, the initial weights and the bootstrap with it)."))
    epochs: int = option(100, check=Interval(int, 1), help="Training epochs.")
    lr: float = option(2e-4, check=Interval(float, 0, closed="neither"),
                       help="Learning rate (the schedule's peak).")
    weight_decay: float = option(1e-4, check=Interval(float, 0), help=(
        "Weight decay: L2 for adam and sgd, decoupled for adamw."))
    optimizer: str = option("adam", check=OneOf(OPTIMIZERS), help="Optimiser.")
    momentum: float = option(0.0, check=Interval(float, 0, 1, closed="left"), help=(
        "Momentum of sgd: 0 is plain SGD (torch's default); the paper's code uses 0.3, "
        "CLAM-style recipes 0.9."))
    schedule: str = option("cosine", check=OneOf(SCHEDULES),
                           help="Learning-rate schedule: cosine (per epoch, down to 0), "
                                "constant, or warm_restarts (the paper's: cosine restarts "
                                "after 20, 40, 80... epochs).")
    bags_per_step: int | str = option(AUTO, check=BagsPerStep(), help=(
        f"Bags per optimiser step, packed into one forward: a number, or auto (as many as keep "
        f"an epoch at least {AUTO_MIN_STEPS} optimiser steps, at most "
        f"{AUTO_MAX_BAGS_PER_STEP}: one bag per step below {2 * AUTO_MIN_STEPS} training "
        f"bags)."))
    instances_per_bag: int | None = option(None, check=Interval(int, 1), default_text="all",
                                           help="Sample at most this many patches per bag and "
                                                "epoch in training.")
    class_weights: str | Sequence[float] | None = option(
        "balanced", check=ClassWeights(), parse=parse_class_weights,
        help="Loss weight per class: balanced (n / (C n_c) over the training bags), none, or "
             "one weight per class.")
    patience: int | None = option(None, check=Interval(int, 0), default_text="off",
                                  help="Early-stopping patience in epochs (on val).")
    train_stop_auc: float | None = option(
        None, check=Interval(float, 0, 1), default_text="off", help=(
            "Stop after an epoch whose training AUC (of that epoch's training forward "
            "passes, bags merged per patient) exceeds this; the paper's code: 0.98."))
    monitor: str = option("auc", check=OneOf(MONITORS),
                          help="Validation metric that picks the kept epoch.")
    merge: str = option("mean", check=OneOf(MERGES),
                        help="How a patient's bags merge into its probabilities (with "
                             "--bag-level slide or --bags).")
    standardize: bool | None = option(None, check=Flag(), default_text=(
        "the model's: on, off for balnmp (the paper's head takes raw features)"), help=(
        "Z-score each feature with the training instances' mean and std (saved with the "
        "model)."))
    amp: bool = option(True, check=Flag(), help="Mixed precision (bf16, else fp16) on CUDA.")
    device: str | None = option(None, check=Text(), help="torch device, e.g. cuda, cuda:1, cpu.",
                                default_text="cuda when available; fit: the cohort's")
    progress: bool | None = option(None, check=Flag(), default_text="on a terminal",
                                   help="Show a progress bar over the epochs.")
    protocol: str | None = option(None, check=OneOf(PROTOCOLS), default_text="none", help=(
        "A training protocol: sets the options left at their defaults (paper: the BALNMP "
        "code's SGD, warm restarts, 200 epochs, train-AUC stop, one bag per step)."))

    def __post_init__(self) -> None:
        apply_protocol(self)
        check_options(self)

    def standardizes(self, model: MILModel) -> bool:
        """Whether `fit` z-scores `model`'s inputs: `standardize`, else the model's default
        (`MILModel.standardize_default`)."""
        return model.standardize_default if self.standardize is None else self.standardize
