"""The options of `evaluate`, `predict`, `heatmap`, `pack`, `export`, `inspect` and `paper import`
are dataclass fields (as `train`'s are): each field is the command's flag, its default is the
library function's, and a bad value exits 2 with the house message before any work."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import pytest
from click.testing import CliRunner

from balnmp_cache._options import OneOf, Text, declared, default_of, option, option_fields
from balnmp_cache._options_click import click_options
from balnmp_cache.errors import OptionError
from balnmp_cache.store.export import ExportOptions, export_store
from balnmp_cache.store.pack import PackOptions, pack_store
from balnmp_mil.cli.group import main
from balnmp_mil.cli.store import InspectOptions, summarize
from balnmp_mil.paper.importer import ImportOptions, import_checkpoint
from balnmp_mil.workflow.apply import evaluate_run, predict_run
from balnmp_mil.workflow.apply_options import EvaluateOptions, PredictOptions
from balnmp_mil.workflow.config import TrainConfig
from balnmp_mil.workflow.heatmap import heatmap_run
from balnmp_mil.workflow.heatmap_cohort import heatmap_cohort
from balnmp_mil.workflow.heatmap_options import COHORT_OPTIONS, HeatmapOptions

# (options class, the library function taking its fields, the command offering them)
DECLARED: list[tuple[type, Callable[..., Any], tuple[str, ...]]] = [
    (EvaluateOptions, evaluate_run, ("evaluate",)),
    (PredictOptions, predict_run, ("predict",)),
    (HeatmapOptions, heatmap_run, ("heatmap",)),
    (ImportOptions, import_checkpoint, ("paper", "import")),
    (PackOptions, pack_store, ("pack",)),
    (ExportOptions, export_store, ("export",)),
]


def command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    ctx = click.Context(main)
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.get_command(ctx, name)
    return cmd


def keyword_default(func: Callable[..., Any], name: str) -> Any:
    param = inspect.signature(func).parameters[name]
    return dataclasses.MISSING if param.default is inspect.Parameter.empty else param.default


@pytest.mark.parametrize(("cls", "func", "path"), DECLARED, ids=lambda v: getattr(v, "__name__",
                                                                                  None))
def test_each_field_default_is_the_library_functions_default(cls, func, path):
    for f in option_fields(cls):
        target = heatmap_cohort if cls is HeatmapOptions and f.name in COHORT_OPTIONS else func
        if f.name in ("slide", "slides") and cls is HeatmapOptions:
            continue  # SLIDE or --slides DIR: required by heatmap_run / heatmap_cohort
        assert default_of(f) == keyword_default(target, f.name), (cls.__name__, f.name)


def test_the_run_options_of_heatmap_and_inspects_quick_have_the_library_defaults():
    mismatch = next(f for f in dataclasses.fields(TrainConfig)
                    if f.name == "allow_store_mismatch")
    assert default_of(mismatch) == keyword_default(heatmap_run, "allow_store_mismatch")
    (quick,) = option_fields(InspectOptions)
    assert default_of(quick) == (not keyword_default(summarize, "check_features"))


@pytest.mark.parametrize(("cls", "func", "path"), DECLARED, ids=lambda v: getattr(v, "__name__",
                                                                                  None))
def test_each_field_is_the_commands_flag(cls, func, path):
    params = {p.name: p for p in command(path).params}
    for f in option_fields(cls):
        spec = declared(f)
        assert f.name in params, (path, f.name)
        if not spec.argument:
            assert spec.flag_for(f.name) in params[f.name].opts, (path, f.name)


def test_a_required_field_is_a_required_flag_or_argument():
    assert command(("export",)).params[1].required  # --to, after FEATURES
    predict = {p.name: p for p in command(("predict",)).params}
    assert predict["features"].required and predict["out"].required


@pytest.mark.parametrize(("args", "message"), [
    (["heatmap", "RUN", "S.svs", "--out", "o.png", "--top-k", "-1"],
     "top_k -1 (--top-k): must be an integer >= 0"),
    (["heatmap", "RUN", "S.svs", "--out", "o.png", "--thumbnail-size", "0"],
     "thumbnail_size 0 (--thumbnail-size): must be an integer >= 1"),
    (["heatmap", "RUN", "--slides", "D", "--out", "o", "--jobs", "0"],
     "jobs 0 (--jobs): must be an integer >= 1"),
    (["heatmap", "RUN", "S.svs", "--out", "o.png", "--mpp", "0"],
     "mpp 0 (--mpp): must be a number > 0"),
    (["heatmap", "RUN", "S.svs", "--out", "o.png", "--patch-size-level0", "x"],
     "patch_size_level0 x (--patch-size-level0): must be a number > 0"),
    (["heatmap", "RUN", "S.svs", "--out", "o.png", "--backend", "nope"],
     "unknown slide backend 'nope' (--backend); choose one of auto, cucim, openslide"),
    (["heatmap", "RUN", "--slides", "D", "--out", "o", "--split", "dev"],
     "unknown split 'dev' (--split); choose one of train, val, test"),
    (["pack", "F", "--out", "p.h5", "--format", "tar"],
     "unknown pack format 'tar' (--format); choose one of h5, zarr"),
    (["export", "F", "--out", "o", "--to", "stamp"],
     "unknown export layout 'stamp' (--to); choose one of clam, trident"),
    (["export", "F", "--out", "o"], "Missing option '--to'. Choose one of clam, trident."),
    (["paper", "import", "C.pth", "--out", "o", "--task", "n0"],
     "unknown task 'n0' (--task); choose one of n0_vs_n+"),
])
def test_a_bad_value_exits_2_naming_the_option_before_any_work(tmp_path, monkeypatch, args,
                                                                message):
    monkeypatch.chdir(tmp_path)  # none of the inputs exists: any work would fail otherwise
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_library_functions_refuse_a_bad_keyword_as_the_command_line_does(tmp_path):
    with pytest.raises(OptionError, match=r"top_k -1 \(--top-k\): must be an integer >= 0"):
        heatmap_run(tmp_path / "no-run", tmp_path / "s.svs", tmp_path / "o.png", top_k=-1)
    with pytest.raises(OptionError, match=r"jobs 0 \(--jobs\): must be an integer >= 1"):
        heatmap_cohort(tmp_path / "no-run", tmp_path, tmp_path / "out", jobs=0)
    with pytest.raises(OptionError, match=r"top_k -1 \(--top-k\)"):  # once, not per slide
        heatmap_cohort(tmp_path / "no-run", tmp_path, tmp_path / "out", top_k=-1)
    with pytest.raises(OptionError, match=r"unknown task 'n0' \(--task\)"):
        import_checkpoint(tmp_path / "no.pth", tmp_path / "run", task="n0")


def test_a_newly_registered_slide_backend_is_a_heatmap_backend_choice():
    from balnmp_cache.slides.registry import BACKENDS

    BACKENDS.register("dummy_reader", "balnmp_cache.slides.image:ImageSlide")
    try:
        assert HeatmapOptions(backend="dummy_reader").backend == "dummy_reader"
        assert "dummy_reader" in (command(("heatmap",)).get_help(click.Context(main)))
    finally:
        BACKENDS._entries.pop("dummy_reader")


@dataclass(kw_only=True)
class _Target:
    name: str = option(check=Text(), argument=True, help="What to make.")
    kind: str = option(check=OneOf(["a", "b"], "kind"), help="Which kind.")
    size: int = option(3, help="How big.")


@pytest.mark.parametrize(("from_config", "args", "code", "said"), [
    (False, [], 2, "Missing argument 'NAME'"),
    (False, ["x"], 2, "Missing option '--kind'. Choose one of a, b."),
    (False, ["x", "--kind", "c"], 2, "unknown kind 'c' (--kind); choose one of a, b"),
    (False, ["x", "--kind", "b"], 0, "x b 3"),
    (True, [], 0, "None None None"),  # a --config file may give them
])
def test_a_field_without_a_default_is_required_unless_a_config_may_give_it(from_config, args,
                                                                           code, said):
    @click.command()
    @click_options(_Target, from_config=from_config)
    def make(name: str | None, kind: str | None, size: int | None) -> None:
        click.echo(f"{name} {kind} {size}")

    result = CliRunner().invoke(make, args)
    assert result.exit_code == code, result.output
    assert said in result.output
