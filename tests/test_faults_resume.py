"""Fault suite, resume: a finished slide is skipped only when it is verified.

A resume compares every finished slide of its list (not just the first) with every setting
that shapes features, the slide file's content and the annotation used; a store-level
settings record (`extract_settings.json`) makes two jobs of different settings on one `--out`
unable to both succeed. A damaged finished slide is extracted again instead of being skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import pytest
from _extract_helpers import FAST, fast_cli_args, tiny_cohort
from _faults import assert_refused
from click.testing import CliRunner

from balnmp_cache.cli import main
from balnmp_cache.extract import ExtractError, extract_features
from balnmp_cache.extract.resume import ResumeWarning
from balnmp_cache.extract.settings import SETTINGS_NAME
from balnmp_cache.store import FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".locks" not in p.parts}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=3)


@pytest.fixture(scope="module")
def base(cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("base") / "features"
    res = CliRunner().invoke(main, fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir))
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def store(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "features"
    shutil.copytree(base, out)
    return out


def extract(slides: Path, out: Path, annotations: Path | None, *extra: str):  # noqa: ANN201
    return CliRunner().invoke(main, [*fast_cli_args(slides, out, annotations), *extra])



# Each setting that shapes features, changed on its own: the flag, what the store holds and
# what the rerun asks for must all be named.
SETTINGS = [
    (["--encoder", "resnet34"], "--encoder", "'resnet18'", "'resnet34'"),
    (["--seed", "1"], "--weights", "'none:seed=0'", "'none:seed=1'"),
    (["--mpp", "0.5"], "--mpp", "1.0", "0.5"),
    (["--patch-size", "16"], "--patch-size", "32", "16"),
    (["--level", "1"], "--level", "none", "1"),
    (["--input-size", "64"], "--input-size", "32", "64"),
    (["--tissue", "resection"], "--tissue", "'biopsy'", "'resection'"),
    (["--min-tissue", "0.2"], "--min-tissue", "0.5", "0.2"),
    (["--dtype", "float32"], "--dtype", "'float16'", "'float32'"),
]


@pytest.mark.parametrize("with_record", [True, False], ids=["record", "no-record"])
@pytest.mark.parametrize(("extra", "flag", "stored", "asked"), SETTINGS,
                         ids=[s[1] for s in SETTINGS])
def test_a_resume_with_another_setting_is_refused(cohort, store: Path, extra: list[str], flag: str,  # noqa: ANN001
                                                  stored: str, asked: str,
                                                  with_record: bool) -> None:  # fmt: skip
    """With the store's record, or without it (an older store): every slide is compared."""
    if not with_record:
        (store / SETTINGS_NAME).unlink()
    before = digest(store)
    res = extract(cohort.slides_dir, store, cohort.annotations_dir, *extra)
    assert_refused(res, f"{flag} {stored} (asked for {asked})", "--overwrite", "another --out")
    if not with_record:  # the slides themselves were compared, all of them
        assert "'1'" in res.output and "'3'" in res.output
    assert digest(store) == before


def test_a_resume_without_the_annotations_is_refused(cohort, store: Path) -> None:  # noqa: ANN001
    before = digest(store)
    assert_refused(extract(cohort.slides_dir, store, None), "--annotations", "--overwrite")
    assert digest(store) == before


def test_an_annotation_whose_content_changed_is_refused(cohort, store: Path, tmp_path: Path) -> None:  # noqa: ANN001, E501
    """Only slide 2's annotation changed: the last slide is checked, not just the first."""
    ann = tmp_path / "ann"
    shutil.copytree(cohort.annotations_dir, ann)
    data = json.loads((ann / "2.json").read_text())
    data["positive"] = data["positive"][:1] + data["positive"][:1]  # other bytes, same regions
    (ann / "2.json").write_text(json.dumps(data))
    res = extract(cohort.slides_dir, store, ann)
    assert_refused(res, "slide '2'", "--annotations", f"{ann / '2.json'}", "--overwrite")
    assert "slide '1'" not in res.output and "slide '3'" not in res.output


def test_an_annotation_moved_to_another_folder_unchanged_is_accepted(cohort, store: Path,  # noqa: ANN001
                                                                     tmp_path: Path) -> None:  # fmt: skip
    ann = tmp_path / "copied"
    shutil.copytree(cohort.annotations_dir, ann)
    res = extract(cohort.slides_dir, store, ann)
    assert res.exit_code == 0, res.output
    assert "3 slides: 3 skipped;" in res.output, res.output


def test_a_slide_file_whose_content_changed_is_refused(cohort, store: Path, tmp_path: Path) -> None:  # noqa: ANN001, E501
    slides = tmp_path / "slides"
    shutil.copytree(cohort.slides_dir, slides)
    with open(slides / "3.svs", "ab") as f:
        f.write(b"\0" * 16)  # a rescan, or another cohort with the same ids
    res = extract(slides, store, cohort.annotations_dir)
    assert_refused(res, "slide '3'", f"{slides / '3.svs'}", "slide file", "--overwrite")


def test_slides_moved_elsewhere_unchanged_resume(cohort, store: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Staging slides onto a node's scratch disk (a copy: new path and mtime) is not a change."""
    slides = tmp_path / "scratch"
    slides.mkdir()
    for p in cohort.slides_dir.iterdir():
        shutil.copyfile(p, slides / p.name)
    res = extract(slides, store, cohort.annotations_dir)
    assert res.exit_code == 0, res.output
    assert "3 slides: 3 skipped;" in res.output, res.output


def test_a_slide_copied_in_from_another_store_is_refused(cohort, store: Path, tmp_path: Path) -> None:  # noqa: ANN001, E501
    other = tmp_path / "other"
    res = extract(cohort.slides_dir, other, cohort.annotations_dir, "--encoder", "resnet34")
    assert res.exit_code == 0, res.output
    shutil.copyfile(other / "3.h5", store / "3.h5")
    res = extract(cohort.slides_dir, store, cohort.annotations_dir)
    assert_refused(res, "slide '3'", "--encoder 'resnet34' (asked for 'resnet18')")


def test_a_slide_tiled_without_its_annotation_is_refused_without_allow_unannotated(
    cohort, tmp_path: Path,  # noqa: ANN001
) -> None:
    ann = tmp_path / "ann"
    shutil.copytree(cohort.annotations_dir, ann)
    (ann / "2.json").unlink()
    out = tmp_path / "features"
    res = extract(cohort.slides_dir, out, ann, "--allow-unannotated")
    assert res.exit_code == 0, res.output
    assert_refused(extract(cohort.slides_dir, out, ann), "slide '2'", "--allow-unannotated")
    assert extract(cohort.slides_dir, out, ann, "--allow-unannotated").exit_code == 0


def test_mpp_override_changed_is_refused(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "features"
    table = tmp_path / "mpp.csv"
    table.write_text("slide_id,mpp\n2,0.5\n")
    res = extract(cohort.slides_dir, out, None, "--mpp-overrides", str(table))
    assert res.exit_code == 0, res.output
    table.write_text("slide_id,mpp\n2,0.25\n")
    res = extract(cohort.slides_dir, out, None, "--mpp-overrides", str(table))
    assert_refused(res, "slide '2'", "--mpp-overrides", "0.5", "0.25")


def test_an_old_store_without_records_resumes_with_a_warning(cohort, store: Path) -> None:  # noqa: ANN001
    """Slides written before the settings were recorded: compared on what they hold."""
    (store / SETTINGS_NAME).unlink()
    for p in store.glob("*.h5"):
        with h5py.File(p, "a") as f:
            for name in ("extract_settings", "source_fingerprint", "annotations_sha256",
                         "balnmp_json_attrs"):  # fmt: skip
                if name in f.attrs:
                    del f.attrs[name]
    with pytest.warns(ResumeWarning, match=r"'1', '2', '3'.*fingerprint.*not recorded"):
        res = extract(cohort.slides_dir, store, cohort.annotations_dir)
    assert res.exit_code == 0, res.output
    assert "3 slides: 3 skipped;" in res.output, res.output
    res = extract(cohort.slides_dir, store, cohort.annotations_dir, "--min-tissue", "0.2")
    assert_refused(res, "--min-tissue 0.5 (asked for 0.2)")


def _forget_resample(store: Path) -> None:
    """Make `store` as a balnmp before the resize kernel was recorded wrote it."""
    record = json.loads((store / SETTINGS_NAME).read_text())
    del record["settings"]["resample"]
    (store / SETTINGS_NAME).write_text(json.dumps(record))
    for p in store.glob("*.h5"):
        with h5py.File(p, "a") as f:
            settings = json.loads(f.attrs["extract_settings"])
            assert settings.pop("resample") == "torchvision-8bit"
            f.attrs["extract_settings"] = json.dumps(settings)


def test_slides_an_older_balnmp_resized_in_float_are_refused(cohort, tmp_path: Path) -> None:  # noqa: ANN001, E501
    """Read at 32 px for a 16 px input: before `resample` was recorded the CNN family was
    resized by the float kernel, which differs from torchvision's 8-bit one of this job."""
    out = tmp_path / "features"
    res = extract(cohort.slides_dir, out, cohort.annotations_dir, "--input-size", "16")
    assert res.exit_code == 0, res.output
    _forget_resample(out)
    before = digest(out)
    res = extract(cohort.slides_dir, out, cohort.annotations_dir, "--input-size", "16")
    assert_refused(res, "the resize kernel (resample", "'float' (asked for 'torchvision-8bit')",
                   "'1'", "'3'", "--overwrite", "another --out")  # fmt: skip
    assert digest(out) == before


def test_slides_an_older_balnmp_did_not_resize_resume_silently(cohort, store: Path) -> None:  # noqa: ANN001, E501
    """Read at the encoder's 32 px: no kernel was used, so the older slides are this job's."""
    _forget_resample(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        res = extract(cohort.slides_dir, store, cohort.annotations_dir)
    assert res.exit_code == 0, res.output
    assert "3 slides: 3 skipped;" in res.output, res.output


def test_a_slide_that_does_not_tell_its_sizes_is_not_said_to_be_float_resized(cohort, store: Path) -> None:  # noqa: ANN001, E501
    """Without `read_size` and `encoder_input_size` (not written by balnmp) a slide does not
    tell whether it was resized, let alone how: its kernel is unrecorded (a warning, as every
    setting a slide does not record), not an invented 'float' that refuses the resume."""
    _forget_resample(store)
    for p in store.glob("*.h5"):
        with h5py.File(p, "a") as f:
            del f.attrs["read_size"], f.attrs["encoder_input_size"]
    with pytest.warns(ResumeWarning, match=r"the resize kernel \(resample.*not recorded"):
        res = extract(cohort.slides_dir, store, cohort.annotations_dir)
    assert res.exit_code == 0, res.output
    assert "'float'" not in res.output and "3 slides: 3 skipped;" in res.output, res.output


def _forget_resample_zarr(store: Path) -> None:
    """`_forget_resample` for a Zarr store: each slide group's `zarr.json` attributes."""
    record = json.loads((store / SETTINGS_NAME).read_text())
    del record["settings"]["resample"]
    (store / SETTINGS_NAME).write_text(json.dumps(record))
    for p in store.glob("*/zarr.json"):
        meta = json.loads(p.read_text())
        assert meta["attributes"]["extract_settings"].pop("resample") == "torchvision-8bit"
        p.write_text(json.dumps(meta))


@pytest.mark.parametrize(("extra", "refused"), [(("--input-size", "16"), True), ((), False)])
def test_zarr_slides_of_an_older_balnmp_follow_the_same_resample_rule(
        cohort, tmp_path: Path, extra: tuple[str, ...], refused: bool) -> None:  # noqa: ANN001
    """The legacy rule reads `read_size`/`encoder_input_size`, which Zarr slides carry too."""
    out = tmp_path / "features.zarr"
    args = (*extra, "--format", "zarr")
    assert extract(cohort.slides_dir, out, cohort.annotations_dir, *args).exit_code == 0
    _forget_resample_zarr(out)
    res = extract(cohort.slides_dir, out, cohort.annotations_dir, *args)
    if refused:
        assert_refused(res, "'float' (asked for 'torchvision-8bit')", "--overwrite")
    else:
        assert res.exit_code == 0, res.output
        assert "3 slides: 3 skipped;" in res.output, res.output


def test_a_settings_record_refuses_other_settings_before_any_slide_exists(cohort, tmp_path: Path) -> None:  # noqa: ANN001, E501
    """A job killed before finishing its first slide has still claimed the store."""
    out = tmp_path / "features"
    out.mkdir()
    extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir,
                     shard="0/3", **FAST)  # fmt: skip
    for p in out.glob("*.h5"):
        p.unlink()
    res = extract(cohort.slides_dir, out, cohort.annotations_dir, "--encoder", "resnet34")
    assert_refused(res, SETTINGS_NAME, "--encoder 'resnet18' (asked for 'resnet34')")


@pytest.mark.parametrize("content", ["{not json", json.dumps({"balnmp_extract_settings": 99})])
def test_a_damaged_or_newer_settings_record_is_a_message(cohort, store: Path, content: str) -> None:  # noqa: ANN001, E501
    (store / SETTINGS_NAME).write_text(content)
    assert_refused(extract(cohort.slides_dir, store, cohort.annotations_dir), SETTINGS_NAME)


def test_overwrite_replaces_the_record_and_every_slide(cohort, store: Path) -> None:  # noqa: ANN001
    res = extract(cohort.slides_dir, store, cohort.annotations_dir, "--encoder", "resnet34",
                  "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((store / SETTINGS_NAME).read_text())["settings"]["encoder"] == "resnet34"
    fs = FeatureStore(store)
    assert {fs.attrs(s)["encoder"] for s in fs.slide_ids} == {"resnet34"}
    assert extract(cohort.slides_dir, store, cohort.annotations_dir, "--encoder",
                   "resnet34").exit_code == 0


def test_overwrite_of_some_slides_names_those_left_with_the_old_settings(cohort, store: Path,  # noqa: ANN001
                                                                         tmp_path: Path) -> None:  # fmt: skip
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(cohort.slides_dir / "1.svs", one / "1.svs")
    with pytest.warns(ResumeWarning, match=r"--encoder 'resnet18'.*slides '2', '3'.*keep the old"):
        res = extract(one, store, cohort.annotations_dir, "--encoder", "resnet34", "--overwrite")
    assert res.exit_code == 0, res.output
    res = extract(cohort.slides_dir, store, cohort.annotations_dir, "--encoder", "resnet34")
    assert_refused(res, "slides '2', '3'", "--encoder 'resnet18' (asked for 'resnet34')")


@pytest.mark.parametrize(("fmt", "name"), [("zarr", "features"), ("h5", "features.zarr")])
def test_an_out_of_the_other_format_is_refused(cohort, tmp_path: Path, fmt: str, name: str) -> None:  # noqa: ANN001, E501
    out = tmp_path / name
    other = "h5" if fmt == "zarr" else "zarr"
    res = extract(cohort.slides_dir, out, None, "--format", other)
    assert res.exit_code == 0, res.output
    before = digest(out)
    assert_refused(extract(cohort.slides_dir, out, None, "--format", fmt), f"--format {other}")
    assert digest(out) == before


def test_a_truncated_finished_hdf5_slide_is_extracted_again(cohort, store: Path) -> None:  # noqa: ANN001
    victim = store / "2.h5"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.warns(ResumeWarning, match=r"slide '2'.*damaged.*truncated.*extracting it again"):
        res = extract(cohort.slides_dir, store, cohort.annotations_dir)
    assert res.exit_code == 0, res.output
    bag = FeatureStore(store)["2"]
    assert len(bag) > 0


def test_a_zarr_slide_missing_a_chunk_is_extracted_again(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "features.zarr"
    assert extract(cohort.slides_dir, out, None, "--format", "zarr").exit_code == 0
    chunk = next(p for p in sorted((out / "2" / "features" / "c").rglob("*")) if p.is_file())
    chunk.unlink()
    with pytest.warns(ResumeWarning, match=r"slide '2'.*damaged.*missing.*extracting it again"):
        res = extract(cohort.slides_dir, out, None, "--format", "zarr")
    assert res.exit_code == 0, res.output
    assert chunk.is_file()
    assert len(FeatureStore(out)["2"]) > 0


def _hook_after_first_slide(monkeypatch: pytest.MonkeyPatch, action) -> None:  # noqa: ANN001
    """Run `action` once, right after the job records its first slide (another job acting
    on the same --out while this one runs)."""
    import balnmp_cache.extract.run as run_mod

    real = run_mod.update_manifest
    calls = []

    def update(out, rows, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        real(out, rows, *a, **kw)
        if not calls:
            calls.append(1)
            action()

    monkeypatch.setattr(run_mod, "update_manifest", update)


def test_a_record_replaced_by_another_job_stops_this_one(cohort, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    out = tmp_path / "features"

    def other_job_overwrites() -> None:
        record = json.loads((out / SETTINGS_NAME).read_text())
        record["settings"]["encoder"] = "resnet34"
        (out / SETTINGS_NAME).write_text(json.dumps(record))

    _hook_after_first_slide(monkeypatch, other_job_overwrites)
    with pytest.raises(ExtractError, match=r"changed.*another job.*--encoder 'resnet34'"):
        extract_features(cohort.slides_dir, out, **FAST)
    assert FeatureStore(out).slide_ids == ["1"]


def test_a_slide_written_by_another_job_meanwhile_is_caught_at_the_end(cohort, store: Path,  # noqa: ANN001
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: E501 fmt: skip
    """Slide 1 is locked by a running job when this one passes it; that job then writes it
    with other settings: this job must not report success."""
    from balnmp_cache.extract.locks import try_lock

    other = tmp_path / "other"
    res = extract(cohort.slides_dir, other, cohort.annotations_dir, "--encoder", "resnet34")
    assert res.exit_code == 0, res.output
    for p in store.glob("*.h5"):
        p.unlink()
    lock = try_lock(store / ".locks" / "1.lock")
    assert lock is not None

    def other_job_finishes_slide_1() -> None:
        shutil.copyfile(other / "1.h5", store / "1.h5")
        lock.release()

    _hook_after_first_slide(monkeypatch, other_job_finishes_slide_1)
    with pytest.raises(ExtractError, match=r"slide '1'.*--encoder 'resnet34' \(asked for 'resnet18'\)"):
        extract_features(cohort.slides_dir, store, annotations=cohort.annotations_dir, **FAST)


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "balnmp_cache.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.faults_slow
@pytest.mark.parametrize("round_", range(3))
def test_two_concurrent_jobs_of_different_settings_cannot_both_succeed(cohort, tmp_path: Path,  # noqa: ANN001
                                                                       round_: int) -> None:  # fmt: skip
    out = tmp_path / "features"
    jobs = {enc: _cli([*fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir),
                       "--encoder", enc]) for enc in ("resnet18", "resnet34")}  # fmt: skip
    outputs = {enc: p.communicate(timeout=600) for enc, p in jobs.items()}
    codes = {enc: p.returncode for enc, p in jobs.items()}
    assert sorted(codes.values()) == [0, 2], outputs
    winner = next(enc for enc, code in codes.items() if code == 0)
    loser = next(enc for enc, code in codes.items() if code == 2)
    assert "Traceback" not in outputs[loser][1] and "another --out" in outputs[loser][1]
    fs = FeatureStore(out)
    assert fs.slide_ids == ["1", "2", "3"]
    assert {fs.attrs(s)["encoder"] for s in fs.slide_ids} == {winner}


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_exactly_one_of_racing_creators_makes_the_record(tmp_path: Path, links: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`create_new`, under the settings record: one winner, complete content, no temp left."""
    import errno
    import threading

    from balnmp_cache.store._atomic import create_new

    if not links:
        def no_link(src, dst):  # noqa: ANN001, ANN202
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target, barrier, won = tmp_path / "record.json", threading.Barrier(8), []

    def race(i: int) -> None:
        barrier.wait()
        if create_new(target, json.dumps({"by": i}).encode()):
            won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and json.loads(target.read_text()) == {"by": won[0]}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
