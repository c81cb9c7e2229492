"""Demo videos: a held-out face filmed by a moving camera, and its self-blended fake.

``examples/real_0.mp4`` is a virtual camera moving over the photo of a test-split identity (one
that no model trains on): a smooth pan, a slow zoom in and a small rotation back and forth.
``examples/fake_0.mp4`` is the same shot with the face self-blended in every frame
(:func:`src.data.blend.self_blend_with_mask`, SBI as in the demo data set) through the same
random draws each frame: the mask's shape relative to the face, the colour and frequency
changes of the source, its small shift and the blend ratio stay put while the face moves, as
they would in a temporally consistent face swap. The blend is made on a face-centred square
crop the size of the training crops, then pasted back; outside the mask the two videos are the
same pixels.

Both are H.264 (libx264, one thread, so the bytes are the same on every build of the same
library versions) in MP4, ``yuv420p``, small enough to commit.

Usage::

    python -m src.data.make_videos --out examples [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from src.data.blend import self_blend_with_mask
from src.data.sources import Identity, load_identities
from src.data.splits import EXAMPLE_IDENTITIES, sample_rng

__all__ = [
    "Shot",
    "blend_face",
    "build_videos",
    "camera",
    "demo_identity",
    "encode_h264",
    "main",
    "render_frames",
    "shot_frames",
]


@dataclass(frozen=True)
class Shot:
    """How a demo video is filmed and encoded."""

    # Whole 16-px macroblocks: at 480x360 libx264 (one thread) wrote different bytes from run
    # to run for the same frames; at 512x384 repeated encodes were identical.
    width: int = 512
    height: int = 384
    fps: int = 20
    frames: int = 70  # 3.5 s
    zoom: tuple[float, float] = (1.05, 1.3)  # frame px per photo px, start -> end
    pan: tuple[float, float] = (50.0, 14.0)  # photo px: horizontal sweep, vertical bob
    max_angle: float = 4.0  # degrees, one slow swing each way
    crf: int = 20
    gop: int = 20  # a key frame a second: seeking in the examples is realistic


# Side of the square the fake is blended on, in face sides (the training crops' margin).
_BLEND_MARGIN = 1.35


def _smooth(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def camera(ident: Identity, shot: Shot, index: int) -> np.ndarray:
    """The 2x3 affine map from the photo to frame ``index``: the face centre plus the pan at
    the frame's centre, zoomed and rotated about it."""
    t = index / max(1, shot.frames - 1)
    x, y, w, h = ident.box
    cx = x + w / 2.0 + shot.pan[0] * (_smooth(t) - 0.5)
    cy = y + h / 2.0 + shot.pan[1] * math.sin(math.pi * t)
    zoom = shot.zoom[0] + (shot.zoom[1] - shot.zoom[0]) * _smooth(t)
    angle = shot.max_angle * math.sin(2.0 * math.pi * t)
    m = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
    m[:, 2] += np.array([shot.width / 2.0 - cx, shot.height / 2.0 - cy])
    return m


def _face_in_frame(
    ident: Identity, m: np.ndarray
) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
    """The face's box (axis-aligned, around the mapped centre) and landmarks in the frame."""
    x, y, w, h = ident.box
    zoom = float(np.hypot(m[0, 0], m[0, 1]))
    cx, cy = m @ np.array([x + w / 2.0, y + h / 2.0, 1.0])
    bw, bh = w * zoom, h * zoom
    box = (round(cx - bw / 2), round(cy - bh / 2), round(bw), round(bh))
    if ident.landmarks is None:
        return box, None
    pts = np.hstack([ident.landmarks.astype(np.float64), np.ones((5, 1))]) @ m.T
    return box, pts


def blend_face(
    frame: np.ndarray,
    box: tuple[int, int, int, int],
    landmarks: np.ndarray | None,
    seed: int,
    name: str,
) -> np.ndarray:
    """The frame with its face self-blended, the same draws in every frame (same seed)."""
    x, y, w, h = box
    side = min(round(_BLEND_MARGIN * max(w, h)), frame.shape[0], frame.shape[1])
    x0 = min(max(0, round(x + w / 2 - side / 2)), frame.shape[1] - side)
    y0 = min(max(0, round(y + h / 2 - side / 2)), frame.shape[0] - side)
    crop = np.ascontiguousarray(frame[y0 : y0 + side, x0 : x0 + side])
    rng = sample_rng(seed, "video", name)  # fresh each frame: identical blend parameters
    blended, _ = self_blend_with_mask(
        crop,
        rng,
        box=(x - x0, y - y0, w, h),
        landmarks=None if landmarks is None else (landmarks - [x0, y0]).astype(np.float32),
    )
    out = frame.copy()
    out[y0 : y0 + side, x0 : x0 + side] = blended
    return out


def shot_frames(ident: Identity, shot: Shot, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(real, fake)`` RGB frames of the shot, in order."""
    for i in range(shot.frames):
        m = camera(ident, shot, i)
        real = cv2.warpAffine(
            ident.image,
            m,
            (shot.width, shot.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        box, landmarks = _face_in_frame(ident, m)
        yield real, blend_face(real, box, landmarks, seed, ident.name)


def encode_h264(frames: Iterable[np.ndarray], fps: int, crf: int = 20, gop: int = 20) -> bytes:
    """H.264 in MP4 (``yuv420p``, libx264 on one thread, bit-exact flags): the same bytes for
    the same frames on the same library versions. Frames must share an even width and height."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(
            "libx264",
            rate=fps,
            options={"crf": str(crf), "preset": "medium", "threads": "1"},
        )
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i, rgb in enumerate(frames):
            if i == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buffer.getvalue()


def _encode(frames: Sequence[np.ndarray], shot: Shot) -> bytes:
    return encode_h264(frames, shot.fps, shot.crf, shot.gop)


def demo_identity(split_seed: int = 0) -> Identity:
    """The face of ``examples/real_0.jpg``: the first of the pinned test identities.

    ``split_seed`` is kept for compatibility: the examples' faces are test identities under
    every split seed (:data:`src.data.splits.EXAMPLE_IDENTITIES`).
    """
    del split_seed
    identities, _ = load_identities()
    by_name = {i.name: i for i in identities}
    return by_name[EXAMPLE_IDENTITIES[0]]


def render_frames(
    seed: int = 0, shot: Shot | None = None, split_seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """``{"real": [...], "fake": [...]}``: the RGB frames before encoding."""
    shot = shot or Shot()
    ident = demo_identity(split_seed)
    real: list[np.ndarray] = []
    fake: list[np.ndarray] = []
    for r, f in shot_frames(ident, shot, seed):
        real.append(r)
        fake.append(f)
    return {"real": real, "fake": fake}


def build_videos(
    out: str | Path, seed: int = 0, shot: Shot | None = None, split_seed: int = 0
) -> list[Path]:
    """Writes ``real_0.mp4`` and ``fake_0.mp4`` to ``out``; returns their paths."""
    shot = shot or Shot()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label, frames in render_frames(seed, shot, split_seed).items():
        path = folder / f"{label}_0.mp4"
        path.write_bytes(_encode(frames, shot))
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.data.make_videos",
        description="Write real_0.mp4 (a moving camera over a held-out face) and fake_0.mp4 "
        "(the same shot, the face self-blended with the same parameters every frame).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder, e.g. examples")
    p.add_argument("--seed", type=int, default=0, help="random seed of the blend (default 0)")
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the identity split, as in make_demo (default 0): the face is a test one",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in build_videos(args.out, seed=args.seed, split_seed=args.split_seed):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
