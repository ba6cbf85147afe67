"""Run directories: built in a temporary folder beside the target, renamed into place.

A run directory is what `balnmp-mil train` leaves behind: `config.yaml`, `model.pt` (a
state_dict only) + `model.json` (the `build_model` config), `clinical_encoder.json`,
`splits.json`, `predictions.csv`, `metrics.json`, `report.md`, `roc.png`, `history.csv`.
Nothing is written at the target until the whole run succeeded, so a crash or an error never
leaves a half-written run; `overwrite=True` swaps the new run in atomically
(`balnmp_cache.store._atomic.publish`), and only over an earlier run directory, never over a feature
store or any other folder, nor inside or over the inputs the run reads.
Loading never executes code from the files: `torch.load(weights_only=True)`, YAML/JSON configs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from balnmp_cache.store._atomic import check_output, fsync_tree, publish, side_name
from balnmp_mil.errors import RunDirError

if TYPE_CHECKING:
    from balnmp_mil.data.clinical import ClinicalEncoder
    from balnmp_mil.data.splits import Split
    from balnmp_mil.models import MILModel

CONFIG = "config.yaml"
MODEL_WEIGHTS = "model.pt"
MODEL_CONFIG = "model.json"
CLINICAL_ENCODER = "clinical_encoder.json"
SPLITS = "splits.json"
PREDICTIONS = "predictions.csv"
METRICS = "metrics.json"
REPORT = "report.md"
ROC = "roc.png"
HISTORY = "history.csv"


# --------------------------------------------------------------------------- config files
def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a plain-data mapping as YAML (or JSON when the name ends in .json)."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps(config, indent=2, default=_plain) + "\n")
    else:
        path.write_text(yaml.safe_dump(_to_plain(config), sort_keys=False))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON mapping with the safe loaders; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"config file {path} does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RunDirError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RunDirError(
            f"config file {path} must hold a mapping of option: value, "
            f"got {type(data).__name__}"
        )
    return data


def read_json(path: Path) -> Any:
    """A run's JSON file; a damaged one is a `RunDirError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read {path} ({exc}); the run is damaged: train it again "
                          "or restore it from a copy") from exc


def write_json(path: Path, data: Any) -> Path:
    """Write JSON with numpy scalars/arrays converted to plain Python."""
    Path(path).write_text(json.dumps(_to_plain(data), indent=2) + "\n")
    return Path(path)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _to_plain(obj: Any) -> Any:
    """Recursively turn numpy values, tuples and paths into YAML/JSON-safe Python."""
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN stays a float; JSON writes NaN
        return obj
    return obj


# --------------------------------------------------------------------------- staging
def is_run_dir(path: Path) -> bool:
    """True for a directory `train` or `cv` wrote: its `config.yaml` records a balnmp version.

    Only such a directory (or an empty one) may be replaced by `--overwrite`: a feature store,
    a home directory or a folder of labels is never mistaken for a run.
    """
    config = Path(path) / CONFIG
    if not config.is_file():
        return False
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    meta = data.get("meta") if isinstance(data, dict) else None
    return isinstance(meta, dict) and "balnmp_version" in meta


def check_target(target: str | Path, overwrite: bool,
                 inputs: Iterable[tuple[str, str | Path | None]] = ()) -> Path:
    """Fail early (before any work) when `target` exists and may not be replaced.

    `--overwrite` replaces only an earlier run directory (or an empty one); the target may
    not be, hold, or lie inside any of `inputs` (FEATURES, `--labels`, `--clinical`, ...).
    """
    target = Path(target)
    check_output(target, inputs, RunDirError)
    if not target.exists():
        return target
    if not overwrite:
        raise RunDirError(
            f"run directory {target} already exists; pass --overwrite to replace it "
            "or choose another --out"
        )
    if not target.is_dir():
        raise RunDirError(f"{target} exists and is not a directory; choose another --out")
    if any(target.iterdir()) and not is_run_dir(target):
        sample = ", ".join(sorted(p.name for p in target.iterdir())[:3])
        raise RunDirError(
            f"--out {target} is not a balnmp-mil run directory (it holds {sample}, ...; no "
            f"{CONFIG} written by balnmp-mil), so --overwrite will not replace it; "
            "choose another --out"
        )
    return target


@contextlib.contextmanager
def staged_run(target: str | Path, overwrite: bool = False,
               inputs: Iterable[tuple[str, str | Path | None]] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success rename it into place.

    On any exception the temporary directory is removed and `target` is left untouched; an OS
    error that names no file (a write into a full disk) is given `target` as its file.
    """
    inputs = list(inputs)
    target = check_target(target, overwrite, inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = side_name(target, "tmp")
    staged.mkdir()
    try:
        yield staged
        check_target(target, overwrite, inputs)  # someone may have created it meanwhile
        fsync_tree(staged)
        publish(staged, target)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- model files
def save_model(run_dir: Path, model: MILModel) -> None:
    """Save the state_dict (`model.pt`) and the JSON config that rebuilds the module."""
    import torch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with open(Path(run_dir) / MODEL_WEIGHTS, "wb") as f:  # a file object: a full disk is an
        torch.save(state, f)                             # OSError, not torch's RuntimeError
    write_json(Path(run_dir) / MODEL_CONFIG, dict(model.config))


def load_model(run_dir: str | Path, device: str | None = None) -> MILModel:
    """Rebuild a run's model with `build_model(**model.json)` and load `model.pt` safely."""
    import pickle

    import torch

    from balnmp_mil.models import build_model

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / MODEL_CONFIG, run_dir / MODEL_WEIGHTS
    for path in (cfg_path, weights):
        if not path.is_file():
            raise RunDirError(f"run {run_dir} has no {path.name}; is it a balnmp-mil run?")
    config = read_json(cfg_path)
    if not isinstance(config, dict) or "name" not in config:
        raise RunDirError(f"{cfg_path} does not describe a model; the run is damaged")
    model = build_model(**config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError) as exc:
        raise RunDirError(f"{weights} cannot be loaded into the model of {cfg_path} ({exc}); "
                          "the run is damaged: train it again or restore it from a copy"
                          ) from exc
    if device is not None:
        model = model.to(device)
    return model.eval()


# --------------------------------------------------------------------------- loading
@dataclass
class Run:
    """A saved run: its config, rebuilt model (or None for a clinical-only run) and files."""

    path: Path
    config: dict[str, Any]
    model: MILModel | None
    model_config: dict[str, Any]
    clinical_encoder: ClinicalEncoder | None
    splits: Split | list[Split] | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.metrics.get("class_names") or [])


def load_run(path: str | Path, device: str | None = None) -> Run:
    """Load a run directory written by `train_run` (never unpickles anything)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    if not (path / CONFIG).is_file():
        raise RunDirError(f"{path} has no {CONFIG}; is it a balnmp-mil run directory?")
    config = read_config(path / CONFIG)
    if not (path / MODEL_CONFIG).is_file():
        raise RunDirError(f"run {path} has no {MODEL_CONFIG}; is it a balnmp-mil run?")
    model_config = read_json(path / MODEL_CONFIG)
    if not isinstance(model_config, dict):
        raise RunDirError(f"{path / MODEL_CONFIG} does not describe a model; the run is damaged")
    model = None if model_config.get("kind") == "clinical_logreg" else load_model(path, device)
    encoder = None
    if (path / CLINICAL_ENCODER).is_file():
        from balnmp_mil.data.clinical import ClinicalEncoder

        encoder = ClinicalEncoder.from_dict(read_json(path / CLINICAL_ENCODER))
    splits = None
    if (path / SPLITS).is_file():
        from balnmp_mil.data.splits import load_splits

        splits = load_splits(path / SPLITS)
    metrics = read_json(path / METRICS) if (path / METRICS).is_file() else {}
    return Run(path, config, model, model_config, encoder, splits, metrics)
