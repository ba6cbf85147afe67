"""Run directories: built in a temporary folder beside the target, renamed into place.

A run directory is what `balnmp-mil train` leaves behind: `config.yaml`, `model.pt` (a
state_dict only) + `model.json` (the `build_model` config), `clinical_encoder.json`,
`splits.json`, `predictions.csv`, `metrics.json`, `report.md`, `report.html` (the same results
in one self-contained page), `roc.png`, `history.csv`.
Nothing is written at the target until the whole run succeeded, so a crash or an error never
leaves a half-written run; `overwrite=True` swaps the new run in atomically
(`balnmp_cache.store._atomic.publish`), and only over an earlier run directory, never over a feature
store or any other folder, nor inside or over the inputs the run reads.
Loading never executes code from the files: `torch.load(weights_only=True)`, YAML/JSON configs.
A damaged or partial run (a file missing, cut short or garbled) and a run of a later balnmp
that this one cannot read (`meta.run_format` above `RUN_FORMAT`, or options it does not know)
are a `RunDirError` naming the file and what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from balnmp_cache._version import __version__
from balnmp_cache.store._atomic import (
    check_replaceable,
    fsync_file,
    fsync_tree,
    publish,
    side_name,
)
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
REPORT_HTML = "report.html"  # the same results, self-contained, for a browser
ROC = "roc.png"
HISTORY = "history.csv"
# The layout of a run directory; a later balnmp bumps it only when this one could no longer
# read its runs correctly. Runs without `meta.run_format` (balnmp 0.1.0) are format 1.
RUN_FORMAT = 1
DAMAGED = "the run is damaged: train it again or restore it from a copy"


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
    """Read a YAML/JSON mapping with the safe loaders; errors name the file. A run's
    `config.yaml` of a later balnmp that this one cannot read is refused (`check_written_by`)."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"config file {path} does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RunDirError(f"cannot read config file {path}: {' '.join(str(exc).split())}"
                          ) from exc
    if not isinstance(data, dict):
        raise RunDirError(
            f"config file {path} must hold a mapping of option: value, "
            f"got {type(data).__name__}"
        )
    check_written_by(data, path)
    return data


def _release(version: object) -> tuple[int, ...] | None:
    """The numeric release of a version string ("0.2.0.dev3" -> (0, 2, 0)), or None."""
    match = re.match(r"\d+(\.\d+)*", str(version))
    return tuple(int(p) for p in match.group(0).split(".")) if match else None


def check_written_by(data: dict[str, Any], path: Path) -> None:
    """Refuse a run config this balnmp cannot read: a newer `meta.run_format`, or (written by
    a later release) options this one does not know; either way the fix is an upgrade."""
    meta = data["meta"] if isinstance(data.get("meta"), dict) else {}
    version = meta.get("balnmp_version")
    fmt = meta.get("run_format", 1)
    upgrade = "upgrade balnmp (pip install -U balnmp) to read it"
    if not isinstance(fmt, int) or fmt > RUN_FORMAT:
        raise RunDirError(f"{path} was written by balnmp {version} (run format {fmt}); this "
                          f"balnmp {__version__} reads run format {RUN_FORMAT}: {upgrade}")
    ours, theirs = _release(__version__), _release(version)
    if ours is None or theirs is None or theirs <= ours:
        return
    from balnmp_mil.workflow.config import CVConfig, run_fields

    unknown = sorted(set(data) - {f.name for f in run_fields(CVConfig)} - {"meta"})
    if unknown:
        raise RunDirError(f"{path} was written by balnmp {version}, newer than this balnmp "
                          f"{__version__}, with option(s) {', '.join(unknown)} it does not "
                          f"know: {upgrade}")


def read_json(path: Path) -> Any:
    """A run's JSON file; a damaged one is a `RunDirError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read {path} ({exc}); {DAMAGED}") from exc


def write_json(path: Path, data: Any) -> Path:
    """Write JSON with numpy scalars/arrays converted to plain Python."""
    Path(path).write_text(json.dumps(_to_plain(data), indent=2) + "\n")
    return Path(path)


def write_file(out: str | Path, write: Callable[[Path], object]) -> Path:
    """Write one output file atomically: `write(temp)` beside `out`, fsync, rename into place
    (an earlier `out` stays whole until then); its folder is made if missing. An OS error
    names `out`, not the temporary name."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = side_name(out, "tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        publish(tmp, out)
    except OSError as exc:
        if exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror, str(out)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return out


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
    check_replaceable(target, inputs, overwrite, RunDirError, _replaceable, _not_a_run)
    return target


def _replaceable(path: Path) -> bool:
    """An earlier run directory, or an empty folder."""
    return path.is_dir() and (not any(path.iterdir()) or is_run_dir(path))


def _not_a_run(path: Path) -> str:
    if not path.is_dir():
        return "a balnmp-mil run directory (it is a file)"
    sample = ", ".join(sorted(p.name for p in path.iterdir())[:3])
    return f"a balnmp-mil run directory (it holds {sample}, ...; no {CONFIG} written by balnmp-mil)"


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


def _build(cfg_path: Path) -> MILModel:
    """The module `model.json` describes; a description this balnmp cannot build names it."""
    from balnmp_mil.models import build_model
    from balnmp_mil.models.registry import saved_config

    config = read_json(cfg_path)
    if not isinstance(config, dict) or "name" not in config:
        raise RunDirError(f"{cfg_path} does not describe a model; {DAMAGED}")
    try:
        return build_model(**saved_config(config))
    except (TypeError, ValueError) as exc:  # BalnmpError is a ValueError
        raise RunDirError(f"{cfg_path} describes a model this balnmp cannot build ({exc}); "
                          f"{DAMAGED}, or read it with the balnmp that wrote it") from exc


def load_model(run_dir: str | Path, device: str | None = None) -> MILModel:
    """Rebuild a run's model with `build_model(**model.json)` and load `model.pt` safely."""
    import pickle

    import torch

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / MODEL_CONFIG, run_dir / MODEL_WEIGHTS
    for path in (cfg_path, weights):
        if not path.is_file():
            raise RunDirError(f"run {run_dir} is incomplete: {path.name} is missing; {DAMAGED}")
    model = _build(cfg_path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
            AttributeError) as exc:
        raise RunDirError(f"{weights} cannot be loaded into the model of {cfg_path} "
                          f"({' '.join(str(exc).split())[:300]}); {DAMAGED}") from exc
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

    @property
    def store_record(self) -> dict[str, Any] | None:
        """What the run's features were extracted with (`meta.store`); None for old runs."""
        meta = self.config.get("meta")
        store = meta.get("store") if isinstance(meta, dict) else None
        return dict(store) if isinstance(store, dict) else None


def _required(path: Path, name: str) -> Path:
    if not (path / name).is_file():
        raise RunDirError(f"run {path} is incomplete: {name} is missing (a run holds "
                          f"{CONFIG}, {MODEL_CONFIG}, {MODEL_WEIGHTS}, {METRICS}, ...); "
                          f"{DAMAGED}")
    return path / name


def _metrics(path: Path) -> dict[str, Any]:
    metrics = read_json(_required(path, METRICS))
    names = metrics.get("class_names") if isinstance(metrics, dict) else None
    if not isinstance(names, list) or len(names) < 2:
        raise RunDirError(f"{path / METRICS} does not list the run's class_names; {DAMAGED}")
    return metrics


def _clinical_encoder(path: Path, model_config: dict[str, Any]) -> ClinicalEncoder | None:
    """The run's fitted clinical encoder; required when its model takes clinical data."""
    clinical = (model_config.get("kind") == "clinical_logreg"
                or bool(model_config.get("clinical_dim")))
    if not (path / CLINICAL_ENCODER).is_file():
        if clinical:
            _required(path, CLINICAL_ENCODER)
        return None
    from balnmp_mil.data.clinical import ClinicalEncoder

    try:
        return ClinicalEncoder.from_dict(read_json(path / CLINICAL_ENCODER))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunDirError(f"{path / CLINICAL_ENCODER} does not describe a clinical encoder "
                          f"({exc}); {DAMAGED}") from exc


def load_run(path: str | Path, device: str | None = None) -> Run:
    """Load a run directory written by `train_run` (never unpickles anything)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    if not (path / CONFIG).is_file():
        raise RunDirError(f"{path} has no {CONFIG}; is it a balnmp-mil run directory?")
    config = read_config(path / CONFIG)
    model_config = read_json(_required(path, MODEL_CONFIG))
    if not isinstance(model_config, dict):
        raise RunDirError(f"{path / MODEL_CONFIG} does not describe a model; {DAMAGED}")
    metrics = _metrics(path)
    model = None if model_config.get("kind") == "clinical_logreg" else load_model(path, device)
    encoder = _clinical_encoder(path, model_config)
    splits = None
    if (path / SPLITS).is_file():
        from balnmp_mil.data.splits import load_splits

        splits = load_splits(path / SPLITS)
    return Run(path, config, model, model_config, encoder, splits, metrics)


def read_predictions(run: Run) -> Any:
    """`predictions.csv` of a run (a DataFrame), checked for the columns `evaluate` reads."""
    import pandas as pd

    path = _required(run.path, PREDICTIONS)
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str})
    except (ValueError, OSError) as exc:  # pandas' ParserError and EmptyDataError included
        raise RunDirError(f"cannot read {path} ({exc}); {DAMAGED}") from exc
    need = ["patient_id", "split", "label", *(f"prob_{n}" for n in run.class_names)]
    lacking = [c for c in need if c not in frame.columns]
    if lacking:
        raise RunDirError(f"{path} lacks column(s) {', '.join(lacking)}; {DAMAGED}")
    if frame["label"].isna().any() or frame[need[3:]].isna().any().any():
        raise RunDirError(f"{path} has empty labels or probabilities; {DAMAGED}")
    return frame
