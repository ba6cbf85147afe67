"""Stores and runs know each other: a run is applied (or its config reused) only on features
like those it was trained on.

A run records the store it was trained on (`config.yaml`'s `meta.store`, see
`balnmp_mil.data.provenance`). `check_store` compares the record of the bags a command is
about to use with it: a difference in encoder, weights, µm/px or patch size is a
`StoreMismatchError` naming both values (exit 2) unless `--allow-store-mismatch` (then a
warning); a different feature dimension cannot be applied at all (the model takes a fixed
width), whatever the flag. An old run without a record still loads, with a warning that the
check cannot be made (its model's input width is still checked).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from balnmp_mil.data.provenance import differences, unchecked
from balnmp_mil.errors import MILWarning, StoreMismatchError
from balnmp_mil.workflow import rundir

__all__ = ["check_store", "config_record"]

ALLOW = "--allow-store-mismatch"


def config_record(config: str | Path) -> tuple[dict[str, Any] | None, bool]:
    """(`meta.store` of a config file, whether the file is a run's config at all)."""
    data = rundir.read_config(config)
    meta = data.get("meta")
    if not isinstance(meta, dict) or "balnmp_version" not in meta:
        return None, False  # written by hand: nothing to compare with
    store = meta.get("store")
    return (dict(store) if isinstance(store, dict) else None), True


def _dimension(found: Mapping[str, Any], model_dim: int | None, store: str, run: str) -> None:
    dim = found.get("feature_dim")
    if model_dim is not None and dim is not None and int(dim) != int(model_dim):
        raise StoreMismatchError(
            f"FEATURES {store} cannot be used with {run}: feature dimension {dim} in FEATURES, "
            f"{model_dim} in the run (its model takes {model_dim} values per patch); use "
            "features extracted with the run's encoder"
        )


def check_store(found: Mapping[str, Any], recorded: Mapping[str, Any] | None, *, store: str,
                run: str, allow: bool = False, model_dim: int | None = None,
                applying: bool = True) -> None:
    """Refuse (or with `allow`, warn about) bags whose record `found` differs from the run's
    `recorded` (None: an old run). `store`, `run`: how messages name them ("run demo/run");
    `model_dim`: the width the run's model takes; `applying`: the run's model is applied
    (else its config is reused to train anew)."""
    _dimension(found, model_dim, store, run)
    if recorded is None:
        warnings.warn(f"{run} records no store settings (written before balnmp recorded "
                      "them): whether FEATURES has its encoder, weights, µm/px and patch size "
                      "cannot be checked", MILWarning, stacklevel=2)
        return
    diffs = differences(found, recorded)
    gaps = unchecked(found, recorded)
    if gaps:
        warnings.warn(f"FEATURES {store} does not record its {', '.join(gaps)}: it cannot be "
                      f"checked against {run}", MILWarning, stacklevel=2)
    if not diffs:
        return
    said = "; ".join(d.describe() for d in diffs)
    if allow:
        warnings.warn(f"FEATURES {store} differs from {run} ({said}); going on as "
                      f"{ALLOW} says", MILWarning, stacklevel=2)
        return
    consequence = ("a model applied to other features gives meaningless scores" if applying
                   else "a run trained on them is not comparable with that one")
    raise StoreMismatchError(
        f"FEATURES {store} does not match {run}: {said}; {consequence}. Use the features the "
        f"run was trained on (extract them with its settings), or pass {ALLOW} to go on anyway"
    )
