"""`balnmp-mil export`: our store in CLAM's and TRIDENT's own layouts, read back unchanged.

The exported files are compared with `_data`'s builders, which write byte for byte what
CLAM 53e2409 and TRIDENT a91fa84 write.
"""

from __future__ import annotations

import filecmp
import zipfile

import h5py
import numpy as np
import pytest
import torch
from _data import clam_patches_h5, trident_slide
from click.testing import CliRunner

from balnmp_cache.store import FeatureStore, StoreError
from balnmp_cache.store.export import MARKER, export_store
from balnmp_cache.store.peer_attrs import coords_attrs_for
from balnmp_mil.cli.group import main

DIMS = ((4096, 3072), (2048, 1536), (1024, 768))


def our_store(path, bags, slide_mpp=0.25, read_size=224, reader="openslide", level=1):
    """A store as extract-features writes it: 224 px at 0.5 µm/px, read at level 1."""
    ps0 = round(224 * 0.5 / (slide_mpp or 0.25))
    with FeatureStore(path, mode="a") as store:
        for sid, (feats, coords) in bags.items():
            attrs = {"encoder": "resnet50", "weights": "imagenet", "patch_size": 224,
                     "patch_size_level0": ps0, "target_mpp": 0.5, "slide_mpp": slide_mpp,
                     "level": level, "read_size": read_size, "reader": reader}  # fmt: skip
            cattrs = coords_attrs_for(sid, patch_size=224, patch_size_level0=ps0,
                                      read_size=read_size or 0, level=level, overlap=0,
                                      slide_mpp=slide_mpp, level_dimensions=DIMS,
                                      level_downsamples=(1.0, 2.0, 4.0))  # fmt: skip
            with store.writer(sid, feats.shape[1], "float16", attrs, cattrs) as w:
                w.append(feats, coords)
    return path


def bags(sizes, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for sid, n in sizes.items():
        coords = np.stack([np.arange(n) * 448, np.full(n, 896)], axis=1).astype(np.int64)
        out[sid] = (rng.normal(size=(n, dim)).astype(np.float16), coords)
    return out


@pytest.mark.parametrize("to", ["clam", "trident"])
def test_export_reads_back_as_ours(tmp_path, to):
    written = bags({"a": 9, "b": 4})
    src = our_store(tmp_path / "ours", written)
    result = export_store(src, tmp_path / to, to)
    assert result.slides == ["a", "b"] and result.skipped == {}
    back = FeatureStore(tmp_path / to)
    assert back.format == to and back.slide_ids == ["a", "b"]
    for sid, (feats, coords) in written.items():
        bag = back[sid]
        assert bag.features.dtype == np.float32  # what both peers' models take
        np.testing.assert_array_equal(bag.features, feats.astype(np.float32))
        np.testing.assert_array_equal(bag.coords, coords)
        assert bag.attrs["patch_size_level0"] == 448 and bag.attrs["patch_size"] == 224
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ours", to])  # no temp left


def test_clam_export_is_what_clams_code_reads(tmp_path):
    """pt_files: float32 tensors that torch.load's default (weights_only) loads; patches/:
    CLAM's patch file byte for byte; h5_files: CLAM's layout plus CLAM's patch attributes."""
    written = bags({"a": 40})
    out = tmp_path / "clam"
    export_store(our_store(tmp_path / "ours", written), out, "clam")
    feats, coords = written["a"]
    tensor = torch.load(out / "pt_files" / "a.pt")
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (40, 12)
    with zipfile.ZipFile(out / "pt_files" / "a.pt") as z:
        assert {n.split("/")[0] for n in z.namelist()} == {"a"}  # saved under its own name
    attrs = {"patch_size": 224, "patch_level": 1, "downsample": (2.0, 2.0),
             "downsampled_level_dim": (2048, 1536), "level_dim": (2048, 1536)}  # fmt: skip
    clam_patches_h5(tmp_path / "a.h5", coords, **{k: attrs[k] for k in
                    ("patch_size", "patch_level", "downsample", "level_dim")},
                    save_path=str((out / "patches").resolve()))  # fmt: skip
    assert filecmp.cmp(out / "patches" / "a.h5", tmp_path / "a.h5", shallow=False)
    with h5py.File(out / "h5_files" / "a.h5") as f:
        assert dict(f.attrs) == {} and set(f) == {"features", "coords"}
        assert (f["features"].dtype, f["features"].chunks) == (np.float32, (32, 12))
        assert (f["coords"].dtype, f["coords"].chunks) == (np.int32, (32, 2))
        got = dict(f["coords"].attrs)
        assert got["patch_size"] == 224 and got["patch_level"] == 1 and got["name"] == "a"


def test_trident_export_is_what_trident_writes(tmp_path):
    written = bags({"a": 5, "e": 0})
    out = tmp_path / "job"
    export_store(our_store(tmp_path / "ours", written), out, "trident")
    coords_dir = out / "20x_224px_0px_overlap"
    with h5py.File(coords_dir / "patches" / "a_patches.h5") as f:
        attrs = {k: f["coords"].attrs[k] for k in f["coords"].attrs}
    assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 20
    assert attrs["patch_size_level0"] == 448 and attrs["savetodir"] == str(coords_dir.resolve())
    order = ["patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
             "overlap", "name", "savetodir", "level0_width", "level0_height"]
    for sid, (feats, coords) in written.items():
        mine = tmp_path / "trident" / "20x_224px_0px_overlap"
        trident_slide(mine, "resnet50", sid, feats.astype(np.float32), coords,
                      {k: (sid if k == "name" else attrs[k]) for k in order},
                      features_dir=str((coords_dir / "features_resnet50").resolve()))  # fmt: skip
        for rel in (f"patches/{sid}_patches.h5", f"features_resnet50/{sid}.h5"):
            assert filecmp.cmp(coords_dir / rel, mine / rel, shallow=False), rel
    with h5py.File(coords_dir / "features_resnet50" / "e.h5") as f:
        assert f["features"].shape == (0,) and f["coords"].shape == (0, 2)


def test_export_of_a_slide_the_peer_has_no_file_for(tmp_path):
    """CLAM writes nothing for a slide without patches; TRIDENT writes (0,) features."""
    src = our_store(tmp_path / "ours", bags({"a": 3, "e": 0}))
    result = export_store(src, tmp_path / "clam", "clam")
    assert result.slides == ["a"] and "no patches" in result.skipped["e"]
    assert not (tmp_path / "clam" / "pt_files" / "e.pt").exists()
    assert "skipped e: no patches" in result.summary()
    assert FeatureStore(tmp_path / "clam").slide_ids == ["a"]
    export_store(src, tmp_path / "trident", "trident")
    assert FeatureStore(tmp_path / "trident")["e"].features.shape == (0, 12)


@pytest.mark.parametrize(("kwargs", "to", "message"), [
    ({"reader": "patches", "level": 0}, "clam", "folder of patches, not from a pyramid level"),
    ({"read_size": None}, "clam", "how many pixels were read at that level"),
    ({"slide_mpp": None}, "trident", r"level-0 µm/px \(or TRIDENT magnification\) is unknown"),
])  # fmt: skip
def test_export_refuses_what_the_peer_cannot_express(tmp_path, kwargs, to, message):
    src = our_store(tmp_path / "ours", bags({"a": 3}), **kwargs)
    with pytest.raises(StoreError, match=f"slide 'a' .*{message}"):
        export_store(src, tmp_path / "out", to)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]  # nothing written


def test_export_needs_coordinates(tmp_path):
    """A bag whose coordinates are unknown (-1, as a CLAM pt_files slide reads) is refused."""
    feats, coords = bags({"a": 3})["a"]
    src = our_store(tmp_path / "ours", {"a": (feats, np.full_like(coords, -1))})
    with pytest.raises(StoreError, match="slide 'a' .*has no patch coordinates"):
        export_store(src, tmp_path / "out", "trident")
    assert not (tmp_path / "out").exists()


def test_export_replaces_only_an_export(tmp_path):
    src = our_store(tmp_path / "ours", bags({"a": 3}))
    with pytest.raises(StoreError, match="lies inside FEATURES"):
        export_store(src, src / "x", "clam")
    export_store(src, tmp_path / "out", "clam")
    with pytest.raises(StoreError, match="already exists; choose another --out or pass "
                                         "--overwrite"):  # fmt: skip
        export_store(src, tmp_path / "out", "clam")
    export_store(src, tmp_path / "out", "trident", overwrite=True)
    assert FeatureStore(tmp_path / "out").format == "trident"
    assert (tmp_path / "out" / MARKER).is_file()
    (tmp_path / "other").mkdir()
    with pytest.raises(StoreError, match="is not a balnmp export"):
        export_store(src, tmp_path / "other", "clam", overwrite=True)


def test_export_command(tmp_path):
    src = our_store(tmp_path / "ours", bags({"a": 3, "b": 2}))
    res = CliRunner().invoke(main, ["export", str(src), "--to", "clam", "--out",
                                    str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "exported 2 slides in CLAM's layout (float32)" in res.output
    res = CliRunner().invoke(main, ["export", str(src), "--to", "clam", "--out",
                                    str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 2 and "Error:" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(main, ["export", str(src), "--to", "stamp", "--out", "x"])
    assert res.exit_code == 2 and "clam" in res.output and "trident" in res.output
