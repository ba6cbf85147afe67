"""What features were extracted with, and whether a store matches a run's record of it.

A run keeps the `store_record` of the bags it was trained on (`config.yaml`'s `meta.store`):
encoder, weights, feature dimension, µm/px and patch size, one value each (a list where the
slides differ, as `--allow-mixed` permits; None where no slide records it). `differences`
compares a store's record with a run's: a store value the run never saw is a difference; a
setting that either side does not record cannot be compared (`unchecked`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SETTINGS", "Difference", "differences", "store_record", "unchecked"]

# Record key -> how messages name it (the root attribute of docs/format.md, or the array shape).
SETTINGS = {"encoder": "encoder", "weights": "weights", "feature_dim": "feature dimension",
            "target_mpp": "µm/px", "patch_size": "patch size"}


def _plain(key: str, value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "item"):  # numpy scalars from HDF5 / Zarr attributes
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if key == "target_mpp" and isinstance(value, (int, float)):
        return round(float(value), 4)
    if key in ("feature_dim", "patch_size") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _one_or_list(values: Sequence[Any]) -> Any:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else sorted(distinct, key=repr)


def store_record(attrs: Sequence[Mapping[str, Any]], feature_dim: int) -> dict[str, Any]:
    """The record of bags with these root attributes (one mapping per slide) and dimension."""
    record = {key: _one_or_list([_plain(key, a.get(key)) for a in attrs])
              for key in SETTINGS if key != "feature_dim"}
    return {**{k: record.get(k) for k in SETTINGS}, "feature_dim": int(feature_dim)}


def _as_set(value: Any) -> set[Any]:
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {value}


def _show(values: set[Any]) -> str:
    return ", ".join(repr(v) if isinstance(v, str) else str(v)
                     for v in sorted(values, key=repr))


@dataclass(frozen=True)
class Difference:
    """One setting on which a store and a run differ."""

    key: str
    found: str  # the store's value(s), as shown
    recorded: str  # the run's value(s), as shown

    def describe(self) -> str:
        return f"{SETTINGS[self.key]} {self.found} in FEATURES, {self.recorded} in the run"


def differences(found: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[Difference]:
    """Settings where `found` (a store's record) holds a value `recorded` (a run's) lacks."""
    out = []
    for key in SETTINGS:
        store, run = _as_set(found.get(key)), _as_set(recorded.get(key))
        if store and run and not store <= run:
            out.append(Difference(key, _show(store - run), _show(run)))
    return out


def unchecked(found: Mapping[str, Any], recorded: Mapping[str, Any]) -> list[str]:
    """The settings the run records but the store does not (so they cannot be compared)."""
    return [SETTINGS[k] for k in SETTINGS
            if _as_set(recorded.get(k)) and not _as_set(found.get(k))]
