"""The offline demo data builder (src/data)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from skimage import data as skdata

from src.data.blend import blend, face_swap, upsample_blend
from src.data.make_demo import (
    INCOMPLETE,
    build,
    build_params,
    data_fingerprint,
    main,
    make_sbi_pair,
    random_view,
    self_blend,
    self_blend_with_mask,
    split_identities,
    split_sizes,
    up_to_date,
    write_samples,
)
from src.data.sources import load_identities
from src.data.splits import EXAMPLE_IDENTITIES

PER_IDENTITY = 2
XMANIP = 1


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.suffix == ".jpg" or p.name == "manifest.csv")
    }


def _build(root: Path, seed: int) -> Path:
    # the installed faces only (no registry packages, no videos): the 9-identity set
    build(root, seed=seed, per_identity=PER_IDENTITY, xmanip_per_identity=XMANIP, videos=False)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("demo") / "a", seed=0)


@pytest.fixture(scope="module")
def manifest(built: Path) -> list[dict[str, str]]:
    with (built / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 224x224 astronaut face crop, margin about 1.3."""
    return np.ascontiguousarray(skdata.astronaut()[45:195, 150:300])


def test_identities_are_the_shipped_faces() -> None:
    identities, _missing = load_identities()
    names = [i.name for i in identities]
    assert len(names) == len(set(names))
    # astronaut + 6 faces of the insightface group photo + Tom Hanks (+ Grace Hopper)
    assert {"astronaut", "tom_hanks", *(f"t1_{i}" for i in range(6))} <= set(names)
    for ident in identities:
        x, y, w, h = ident.box
        assert w >= 60 and h >= 60
        assert x >= 0 and x + w <= ident.image.shape[1] and y + h <= ident.image.shape[0]
        assert ident.source in {"scikit-image", "insightface", "matplotlib"}
        assert ident.photo  # which photo (and face) it is, for the manifest
    assert {i.photo for i in identities if i.name.startswith("t1_")} == {
        f"insightface_t1#{k}" for k in range(6)
    }


def test_same_seed_is_byte_identical_and_other_seed_differs(built: Path, tmp_path: Path) -> None:
    first = _hashes(built)
    again = _hashes(_build(tmp_path / "b", seed=0))
    assert first and first == again
    other = _hashes(_build(tmp_path / "c", seed=1))
    assert set(other) == set(first)  # same layout...
    images = [k for k in first if k.endswith(".jpg")]
    changed = sum(first[k] != other[k] for k in images)
    assert changed == len(images)  # ...but every image redrawn


def test_splits_are_by_identity_and_balanced(built: Path, manifest: list[dict[str, str]]) -> None:
    ids: dict[str, set[str]] = defaultdict(set)
    for row in manifest:
        ids[row["split"]].add(row["identity"])
        assert (built / row["path"]).is_file()
        assert row["path"].startswith(f"{row['split']}/{row['label']}/")
    assert set(ids) == {"train", "val", "test", "test_xmanip"}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["test_xmanip"] == ids["test"]
    assert len(ids["val"]) == 2 and len(ids["test"]) == 2 and len(ids["train"]) >= 4
    # the faces of the committed examples are held out
    assert ids["test"] == set(EXAMPLE_IDENTITIES)
    per = Counter((r["split"], r["identity"], r["label"]) for r in manifest)
    for (split, ident, _), n in per.items():
        assert n == (XMANIP if split == "test_xmanip" else PER_IDENTITY)
        assert per[(split, ident, "real")] == per[(split, ident, "fake")]
    # every image on disk is in the manifest
    on_disk = {p.relative_to(built).as_posix() for p in built.rglob("*.jpg")}
    assert on_disk == {r["path"] for r in manifest}
    meta = json.loads((built / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["total_images"] == len(manifest)
    assert meta["identities"]["test"] == sorted(ids["test"])
    assert (built / "README.md").read_text().startswith("# Offline demo")


def test_manipulation_column(manifest: list[dict[str, str]]) -> None:
    for row in manifest:
        if row["label"] == "real":
            assert row["manipulation"] == "none"
        elif row["split"] == "test_xmanip":
            assert row["manipulation"].startswith(("faceswap:", "upsample4x"))
        else:
            assert row["manipulation"] == "sbi"


def test_split_is_deterministic_and_disjoint() -> None:
    names = [f"id{i}" for i in range(9)]
    a = split_identities(names, 0)
    assert a == split_identities(list(reversed(names)), 0)
    assert [len(a[s]) for s in ("train", "val", "test")] == [5, 2, 2]
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(names)
    assert split_identities(names, 1) != a  # the seed moves identities between splits
    with pytest.raises(ValueError):
        split_identities(names[:4])


def test_with_the_packages_the_split_has_10_test_and_6_val_identities() -> None:
    names = [f"id{i:02d}" for i in range(38)]
    assert split_sizes(38) == (6, 10) and split_sizes(27) == (2, 2)
    pinned = ["id05", "id30", "not_there"]
    for seed in range(5):
        a = split_identities(names, seed, pinned_test=pinned)
        assert [len(a[s]) for s in ("train", "val", "test")] == [22, 6, 10]
        assert {"id05", "id30"} <= set(a["test"])  # pinned names go to test, absent ones ignored
        assert not set(a["train"]) & set(a["val"]) | set(a["train"]) & set(a["test"])
        assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert split_identities(names, 0, pinned_test=pinned) != split_identities(
        names, 1, pinned_test=pinned
    )
    with pytest.raises(ValueError, match="pinned"):
        split_identities(names, 0, n_test=1, pinned_test=pinned)


def test_self_blend_changes_only_the_mask_region(face: np.ndarray) -> None:
    face = cv2.resize(face, (224, 224), interpolation=cv2.INTER_AREA)
    kernel = np.ones((3, 3), np.uint8)
    for seed in range(6):
        out, mask = self_blend_with_mask(face, np.random.default_rng(seed))
        assert out.shape == face.shape and out.dtype == np.uint8
        changed = (out != face).any(axis=2)
        region = cv2.dilate((mask > 0).astype(np.uint8), kernel, iterations=2).astype(bool)
        assert changed.sum() > 0.03 * changed.size  # it did blend something
        assert not (changed & ~region).any()  # ...and only inside the (dilated) mask
        assert mask.max() <= 1.0 and mask[0, 0] == 0 and mask[-1, -1] == 0
        ys, xs = np.nonzero(mask > 0.5 * mask.max())
        assert abs(xs.mean() - 112) < 30 and abs(ys.mean() - 112) < 35  # on the face
        # deterministic for a given generator state
        again = self_blend(face, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)


def test_held_out_manipulations_stay_inside_their_mask(face: np.ndarray) -> None:
    face = cv2.resize(face, (224, 224), interpolation=cv2.INTER_AREA)
    donor = np.ascontiguousarray(face[:, ::-1])
    for out, mask in (
        face_swap(face, donor, np.random.default_rng(0)),
        upsample_blend(face, np.random.default_rng(0)),
    ):
        changed = (out != face).any(axis=2)
        assert changed.sum() > 0.05 * changed.size
        assert not (changed & ~(mask > 0)).any()


def test_real_goes_through_a_bit_exact_no_op_blend(face: np.ndarray) -> None:
    mask = np.random.default_rng(0).random(face.shape[:2]).astype(np.float32)
    np.testing.assert_array_equal(blend(face, face, mask), face)


def test_pairs_share_view_and_jpeg_quality() -> None:
    identities, _ = load_identities()
    ident = identities[0]
    for i in range(4):
        pair = make_sbi_pair(ident, seed=0, index=i, size=128)
        real, fake = Image.open(io.BytesIO(pair.real)), Image.open(io.BytesIO(pair.fake))
        assert real.size == fake.size == (128, 128)
        assert isinstance(real, JpegImageFile) and isinstance(fake, JpegImageFile)
        assert real.quantization == fake.quantization  # same JPEG quality
        r = np.asarray(real, np.float32)
        f = np.asarray(fake, np.float32)
        # same framing: the image borders (outside any face mask) nearly agree
        border = np.ones((128, 128), bool)
        border[16:-16, 16:-16] = False
        assert np.abs(r - f)[border].mean() < 3.0
        assert np.abs(r - f).max() > 10  # but the face differs
    view = random_view(ident, np.random.default_rng(0), size=96)
    assert view.image.shape == (96, 96, 3)
    assert view.landmarks is not None and view.landmarks.shape == (5, 2)


def test_samples_out_writes_real_and_blended_pairs(tmp_path: Path) -> None:
    paths = write_samples(tmp_path)
    assert sorted(p.name for p in paths) == ["fake_0.jpg", "fake_1.jpg", "real_0.jpg", "real_1.jpg"]
    for i in range(2):
        r = np.asarray(Image.open(tmp_path / f"real_{i}.jpg"), np.float32)
        f = np.asarray(Image.open(tmp_path / f"fake_{i}.jpg"), np.float32)
        assert r.shape == f.shape == (224, 224, 3)
        assert np.abs(r - f).max() > 10
        assert np.abs(r - f)[:20].mean() < 2.0  # same picture outside the face
    # the sample identities are held-out test identities, whatever the split seed
    identities, _ = load_identities()
    for seed in (0, 1, 7):
        test_ids = split_identities([i.name for i in identities], seed)["test"]
        assert set(EXAMPLE_IDENTITIES) <= set(test_ids)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    base = ["--no-packages", "--no-videos"]
    assert (
        main(["--out", str(out), "--per-identity", "1", "--xmanip-per-identity", "0", *base]) == 0
    )
    assert not (out / "test_xmanip").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"].startswith("python -m src.data.make_demo --out")
    # rebuilding over a previous build is fine; over an unrelated folder is refused
    assert main(["--out", str(out), "--per-identity", "1", *base]) == 0
    assert (out / "test_xmanip").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["--out", str(other), "--per-identity", "1", *base]) == 1
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        main([])


def test_reuse_keeps_only_a_finished_build_of_the_same_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--per-identity", "1", "--xmanip-per-identity", "0"]
    argv += ["--no-packages", "--no-videos", "--reuse"]
    assert main(argv) == 0
    assert "rebuilding: " in capsys.readouterr().out  # nothing there yet
    fingerprint = json.loads((out / "meta.json").read_text())["fingerprint"]
    assert fingerprint["params"] == build_params(
        per_identity=1, xmanip_per_identity=0, videos=False
    )
    assert fingerprint["archives"] == {}
    assert "data/make_demo.py" in fingerprint["code"] and "media/faces.py" in fingerprint["code"]
    assert not (out / INCOMPLETE).exists()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    # the same inputs: kept as it is
    assert main(argv) == 0
    assert "is up to date, not rebuilt" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # other parameters: rebuilt, and the reason named
    assert main([*argv, "--seed", "3"]) == 0
    assert "rebuilding: " in (printed := capsys.readouterr().out) and "params changed" in printed
    assert json.loads((out / "meta.json").read_text())["fingerprint"]["params"]["seed"] == 3

    # a library version (or the code of src/data) changed: stale
    params = json.loads((out / "meta.json").read_text())["fingerprint"]["params"]
    assert up_to_date(out, data_fingerprint(params, {}))[0]
    with monkeypatch.context() as m:
        m.setattr("src.data.make_demo._distribution_version", lambda name: "0.0-other")
        fresh, why = up_to_date(out, data_fingerprint(params, {}))
    assert not fresh and "versions changed" in why

    # a build cut short (marker left, meta.json gone) is never reused, and may be rebuilt over
    (out / INCOMPLETE).write_text("cut short")
    (out / "meta.json").unlink()
    fresh, why = up_to_date(out, data_fingerprint(params, {}))
    assert not fresh and "cut short" in why
    assert main(argv) == 0
    assert "rebuilding: " in capsys.readouterr().out
    assert (out / "meta.json").is_file() and not (out / INCOMPLETE).exists()
