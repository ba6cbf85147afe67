"""Run directories: atomic creation and replacement, safe config and model loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from balnmp_cache.store import _atomic
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.rundir import RunDirError


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_staged_run_appears_only_on_success(tmp_path):
    target = tmp_path / "run"
    with rundir.staged_run(target) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not target.exists(), "the target must not exist before the run completes"
        assert tmp.parent == tmp_path
    assert (target / "a.txt").read_text() == "a"
    assert _leftovers(tmp_path) == []


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with rundir.staged_run(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    with pytest.raises(RunDirError, match=r"run: already exists; choose another --out or pass --overwrite"):
        with rundir.staged_run(target):
            pass


def _mark_run(path, name):
    """What makes a folder a run: a config.yaml whose meta records a balnmp version."""
    rundir.write_config(path / rundir.CONFIG, {"meta": {"balnmp_version": "0"}})
    (path / name).write_text(name)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_overwrite_replaces_and_failure_keeps_old(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_atomic, "exchange", lambda a, b: False)
    target = tmp_path / "run"
    target.mkdir()
    _mark_run(target, "old.txt")
    with pytest.raises(ValueError):
        with rundir.staged_run(target, overwrite=True) as tmp:
            _mark_run(tmp, "new.txt")
            raise ValueError("fails half way")
    assert sorted(p.name for p in target.iterdir()) == [rundir.CONFIG, "old.txt"]
    with rundir.staged_run(target, overwrite=True) as tmp:
        _mark_run(tmp, "new.txt")
    assert sorted(p.name for p in target.iterdir()) == [rundir.CONFIG, "new.txt"]
    assert _leftovers(tmp_path) == []


def test_target_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(RunDirError, match=r"is not a balnmp-mil run directory \(it is a file\), so --overwrite will not"):
        rundir.check_target(tmp_path / "run", overwrite=True)


def test_config_round_trip_and_errors(tmp_path):
    cfg = {"features": tmp_path / "f", "lr": 0.001, "kw": {"a": (1, 2)}}
    path = rundir.write_config(tmp_path / "c.yaml", cfg)
    assert rundir.read_config(path) == {"features": str(tmp_path / "f"), "lr": 0.001,
                                        "kw": {"a": [1, 2]}}
    with pytest.raises(RunDirError, match=r"config file .*nope.yaml does not exist"):
        rundir.read_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    with pytest.raises(RunDirError, match=r"cannot read config file .*bad.yaml"):
        rundir.read_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RunDirError, match=r"list.yaml must hold a mapping"):
        rundir.read_config(tmp_path / "list.yaml")
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RunDirError, match="cannot read config file"):
        rundir.read_config(tmp_path / "evil.yaml")


def test_model_round_trip(tmp_path):
    from balnmp_mil.models import build_model

    model = build_model("abmil", in_dim=8, n_classes=2, embed_dim=8, attention_dim=4, seed=1)
    rundir.save_model(tmp_path, model)
    loaded = rundir.load_model(tmp_path)
    assert loaded.config == model.config
    x = torch.randn(5, 8)
    model.eval()
    torch.testing.assert_close(loaded.forward_bag(x).logits, model.forward_bag(x).logits)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_never_unpickles_code(tmp_path, capsys):
    from balnmp_mil.models import build_model

    model = build_model("abmil", in_dim=8, n_classes=2, embed_dim=8, attention_dim=4)
    rundir.save_model(tmp_path, model)
    torch.save({"w": _Payload()}, tmp_path / rundir.MODEL_WEIGHTS)
    with pytest.raises(RunDirError, match="model.pt cannot be loaded") as info:
        rundir.load_model(tmp_path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)  # refused, not run
    assert "code ran" not in capsys.readouterr().out


def test_damaged_run_files_are_messages(tmp_path):
    from balnmp_mil.models import build_model

    rundir.save_model(tmp_path, build_model("mean", in_dim=4, n_classes=2, embed_dim=4))
    (tmp_path / rundir.MODEL_WEIGHTS).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunDirError, match="model.pt cannot be loaded.*damaged"):
        rundir.load_model(tmp_path)
    (tmp_path / rundir.MODEL_CONFIG).write_text('{"name": "mean", "in_')
    with pytest.raises(RunDirError, match=r"cannot read .*model\.json.*damaged"):
        rundir.load_model(tmp_path)


def test_load_run_errors_name_the_directory(tmp_path):
    with pytest.raises(RunDirError, match=r"run directory .*missing does not exist"):
        rundir.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=r"empty has no config.yaml"):
        rundir.load_run(tmp_path / "empty")
