"""Sample frames (or face crops) from videos with OpenCV.

CLI::

    python -m src.media.frames VIDEO [VIDEO ...] --out DIR \
        [--num-frames N | --every K] [--faces] [--margin 1.3] [--size 224] [--format png]

Frames are written to ``DIR/<videostem>/<videostem>_f<frameidx>.<ext>`` (``frameidx`` is the
0-based frame index, zero-padded to 6 digits). With ``--faces`` the largest-face crop is written
instead, and frames where no face was found are listed (not silently skipped) on stdout and in
``DIR/manifest.json``. Exit status: 0 on success, 1 if any video could not be read, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from src.media.faces import FaceDetector, largest_face_crop

__all__ = [
    "ExtractionResult",
    "FrameRecord",
    "VideoReadError",
    "extract_frames",
    "iter_frames",
    "main",
    "open_video",
    "sample_frame_indices",
]

DEFAULT_NUM_FRAMES = 16


class VideoReadError(OSError):
    """The video is missing, unreadable, or has no decodable frames."""


@dataclass
class FrameRecord:
    """One sampled frame."""

    index: int
    path: str | None = None  # file written, if any
    face_found: bool | None = None  # None when faces were not requested
    # The RGB frame or face crop; kept when no output folder is given (for in-process callers).
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass
class ExtractionResult:
    """What :func:`extract_frames` did for one video."""

    video: str
    total_frames: int
    fps: float
    indices: list[int]
    frames: list[FrameRecord]
    no_face_indices: list[int]  # sampled frames where --faces found no face
    unreadable_indices: list[int]  # sampled frames that could not be decoded

    @property
    def images(self) -> list[np.ndarray]:
        """Kept images (frames or face crops), in frame order."""
        return [f.image for f in self.frames if f.image is not None]

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["frames"] = [
            {"index": f.index, "path": f.path, "face_found": f.face_found} for f in self.frames
        ]
        return out


def sample_frame_indices(
    total: int, num_frames: int | None = None, every: int | None = None
) -> list[int]:
    """Frame indices to sample from a video of ``total`` frames.

    * ``every=k``: ``0, k, 2k, ...`` below ``total``.
    * ``num_frames=n`` (default 16): ``n`` evenly spaced indices, the centres of ``n`` equal
      segments (``floor((i + 0.5) * total / n)``), which avoids the first and last frames that
      some containers cannot decode. All frames when ``n >= total``.
    """
    if num_frames is not None and every is not None:
        raise ValueError("give num_frames or every, not both")
    if total <= 0:
        return []
    if every is not None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        return list(range(0, total, every))
    n = DEFAULT_NUM_FRAMES if num_frames is None else num_frames
    if n < 1:
        raise ValueError(f"num_frames must be >= 1, got {n}")
    if n >= total:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, int, float]:
    """Opens a video; returns ``(capture, frame_count, fps)``. Raises :class:`VideoReadError`."""
    p = Path(path)
    if not p.is_file():
        raise VideoReadError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"cannot open video (unsupported or corrupt): {p}")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if total <= 0:  # some containers do not store a frame count: count by decoding
        total = 0
        while cap.grab():
            total += 1
        cap.release()
        cap = cv2.VideoCapture(str(p))
    if total <= 0:
        cap.release()
        raise VideoReadError(f"video has no decodable frames: {p}")
    return cap, total, fps


def iter_frames(
    cap: cv2.VideoCapture, indices: Sequence[int]
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Yields ``(index, rgb_or_None)`` for the sorted ``indices``, decoding sequentially.

    Sequential ``grab()`` is slower than seeking but exact for every codec; ``None`` marks a
    frame that could not be decoded (e.g. a frame count that overstates the real length).
    """
    wanted = sorted(set(indices))
    pos = 0
    ended = False
    for idx in wanted:
        while not ended and pos < idx:
            if not cap.grab():
                ended = True
            pos += 1
        if ended:
            yield idx, None
            continue
        ok, bgr = cap.read()
        pos += 1
        if not ok or bgr is None:
            ended = True
            yield idx, None
            continue
        yield idx, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


def extract_frames(
    path: str | Path,
    out_dir: str | Path | None = None,
    num_frames: int | None = None,
    every: int | None = None,
    faces: bool = False,
    detector: FaceDetector | None = None,
    margin: float = 1.3,
    size: int | None = 224,
    image_format: str = "png",
    keep_images: bool | None = None,
) -> ExtractionResult:
    """Samples frames from one video, optionally cropping the largest face of each.

    Args:
        path: the video file.
        out_dir: where to write ``<stem>_f<idx>.<format>`` files; ``None`` writes nothing.
        num_frames / every: see :func:`sample_frame_indices` (default 16 evenly spaced).
        faces: replace each frame by its largest-face crop; frames without a face are listed
            in ``no_face_indices`` and not written.
        detector: face detector to use (a default one is built when ``faces`` and ``None``).
        margin, size: face crop margin and output side (``size`` only applies to face crops).
        image_format: ``"png"`` or ``"jpg"``.
        keep_images: keep the RGB arrays in the result (default: only when ``out_dir`` is None).

    Raises:
        VideoReadError: missing, unreadable or empty video.
    """
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"unsupported image format {image_format!r}")
    keep = out_dir is None if keep_images is None else keep_images
    if faces and detector is None:
        detector = FaceDetector()
    cap, total, fps = open_video(path)
    stem = Path(path).stem
    indices = sample_frame_indices(total, num_frames=num_frames, every=every)
    dest: Path | None = None
    if out_dir is not None:
        dest = Path(out_dir)
        dest.mkdir(parents=True, exist_ok=True)
    records: list[FrameRecord] = []
    no_face: list[int] = []
    unreadable: list[int] = []
    try:
        for idx, rgb in iter_frames(cap, indices):
            if rgb is None:
                unreadable.append(idx)
                records.append(FrameRecord(idx))
                continue
            image: np.ndarray | None = rgb
            found: bool | None = None
            if faces:
                assert detector is not None
                image = largest_face_crop(rgb, detector, margin=margin, size=size)
                found = image is not None
                if image is None:
                    no_face.append(idx)
            rec = FrameRecord(idx, face_found=found)
            if image is not None:
                if dest is not None:
                    fpath = dest / f"{stem}_f{idx:06d}.{fmt}"
                    _write_rgb(fpath, image)
                    rec.path = str(fpath)
                if keep:
                    rec.image = image
            records.append(rec)
    finally:
        cap.release()
    if len(unreadable) == len(indices):
        raise VideoReadError(f"no sampled frame could be decoded: {path}")
    return ExtractionResult(
        video=str(path),
        total_frames=total,
        fps=fps,
        indices=indices,
        frames=records,
        no_face_indices=no_face,
        unreadable_indices=unreadable,
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.media.frames",
        description=(
            "Sample frames from videos with OpenCV and write them as images, one subfolder per "
            "video: OUT/<stem>/<stem>_f<frameidx>.<format>. A summary is printed and written "
            "to OUT/manifest.json."
        ),
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video file(s) to read")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--num-frames",
        type=_positive_int,
        metavar="N",
        help=f"sample N evenly spaced frames per video (default {DEFAULT_NUM_FRAMES})",
    )
    g.add_argument("--every", type=_positive_int, metavar="K", help="sample every K-th frame")
    p.add_argument(
        "--faces",
        action="store_true",
        help="write the largest-face crop of each frame instead of the frame; frames with no "
        "face are reported (stdout and manifest), not written",
    )
    p.add_argument(
        "--margin",
        type=_positive_float,
        default=1.3,
        help="face crop side = MARGIN * max(face w, h) (default 1.3, as FF++/DeepfakeBench)",
    )
    p.add_argument(
        "--size",
        type=_positive_int,
        default=224,
        help="resize face crops to SIZE x SIZE (default 224; full frames are not resized)",
    )
    p.add_argument(
        "--format", choices=("png", "jpg"), default="png", help="image format (default png)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    detector = FaceDetector() if args.faces else None
    results: list[ExtractionResult] = []
    errors: list[dict[str, str]] = []
    for video in args.videos:
        try:
            res = extract_frames(
                video,
                out_dir=out / Path(video).stem,
                num_frames=args.num_frames,
                every=args.every,
                faces=args.faces,
                detector=detector,
                margin=args.margin,
                size=args.size,
                image_format=args.format,
            )
        except VideoReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            errors.append({"video": str(video), "error": str(exc)})
            continue
        written = sum(1 for f in res.frames if f.path)
        line = f"{video}: {res.total_frames} frames, sampled {len(res.indices)}, wrote {written}"
        if args.faces:
            line += f", no face in {len(res.no_face_indices)}"
            if res.no_face_indices:
                line += f" (frames {res.no_face_indices})"
        if res.unreadable_indices:
            line += f", unreadable {res.unreadable_indices}"
        print(line)
        results.append(res)
    n_sampled = sum(len(r.indices) for r in results)
    n_written = sum(1 for r in results for f in r.frames if f.path)
    n_no_face = sum(len(r.no_face_indices) for r in results)
    summary = {
        "videos": len(args.videos),
        "videos_failed": len(errors),
        "frames_sampled": n_sampled,
        "frames_written": n_written,
        "frames_without_face": n_no_face if args.faces else None,
        "faces": bool(args.faces),
        "margin": args.margin,
        "size": args.size,
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "summary": summary,
        "videos": [r.to_json() for r in results],
        "errors": errors,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    msg = f"total: {n_sampled} frames sampled, {n_written} written"
    if args.faces:
        msg += f", {n_no_face} without a face"
    if errors:
        msg += f", {len(errors)} video(s) failed"
    print(msg + f"; manifest: {out / 'manifest.json'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
