"""Video-level evaluation (``python -m src.train.evaluate --videos DIR``): the DFDC and
DeepfakeBench practice of sampling frames, cropping faces, scoring each frame and aggregating.

The folder follows DeepfakeBench's real/fake convention::

    DIR/real/**/*.mp4   (any of .mp4 .m4v .mov .webm .mkv .avi)
    DIR/fake/**/*.mp4

Each video is scored by :class:`src.predict.Predictor`, the service's own path: ``--frames N``
frames sampled uniformly over the duration, the checkpoint's face crop with one person followed
across the frames (frames where that face is missing are left out), the backend's calibrated
probabilities. Metrics (:func:`src.train.metrics.binary_metrics`: accuracy at the checkpoint's
threshold, ROC AUC, AP, EER, log loss) are computed at frame level (every scored frame carries
its video's label) and at video level once per aggregation rule
(:data:`src.core.aggregate.AGGREGATE_RULES`). A video that cannot be scored (corrupt, no face)
is listed with its error and left out of every metric.

``DIR/videos.csv`` (optional; written by ``python -m src.data.make_demo``) names each video's
``identity`` and its ``kind`` (``camera`` footage or a ``synthetic`` shot) or ``source``: the
bootstrap intervals (:mod:`src.train.bootstrap`) resample identities, and are reported over all
videos and per kind. Without it each video's file stem is its identity (a real video and its
fake twin share a stem, as in DeepfakeBench's layout), with no source.
"""

from __future__ import annotations

import csv
import functools
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.core.aggregate import AGGREGATE_RULES, AggregateRule, aggregate
from src.core.errors import DatasetError
from src.core.labels import FAKE, LABELS, REAL
from src.models.backends.base import Backend
from src.predict.files import VIDEO_SUFFIXES
from src.predict.scoring import FileResult, Predictor
from src.train.bootstrap import (
    BootstrapOptions,
    LevelReport,
    Unit,
    frame_units,
    sliced_reports,
)
from src.train.metrics import binary_metrics

FRAME_LEVEL = "frame"
LEVEL_METRICS = ("acc", "auc", "ap", "eer", "eer_threshold", "log_loss", "n", "n_fake")
VIDEO_MANIFEST = "videos.csv"


@dataclass(frozen=True)
class LabelledVideo:
    path: Path
    label: int  # index into LABELS: 0 real, 1 fake
    identity: str = ""  # whose face: the bootstrap's resampling unit ("" -> the file stem)
    source: str = ""  # camera / synthetic (videos.csv's kind) or the source column

    @property
    def group(self) -> str:
        return self.identity or self.path.stem


@dataclass(frozen=True)
class ScoredVideo:
    video: LabelledVideo
    frame_probs: tuple[float, ...]  # the scored frames' fake probabilities
    scores: dict[str, float]  # aggregation rule -> the video's fake probability


@dataclass(frozen=True)
class VideoEvaluation:
    checkpoint: str
    version: str
    frames: int
    levels: dict[str, dict[str, float]]  # "frame", "video_mean", ... -> metrics
    videos: tuple[ScoredVideo, ...]
    failed: tuple[FileResult, ...]
    reports: tuple[LevelReport, ...] = ()  # with bootstrap intervals over identities


def level_name(rule: str) -> str:
    return f"video_{rule}"


def _video_manifest(root: Path) -> dict[str, tuple[str, str]]:
    """``videos.csv``: path (relative to ``root``) -> (identity, kind or source)."""
    path = root / VIDEO_MANIFEST
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "path" not in (reader.fieldnames or ()):
            raise DatasetError(f"{path} needs a path column")
        for row in reader:
            source = (row.get("kind") or row.get("source") or "").strip()
            out[Path(row["path"]).as_posix()] = ((row.get("identity") or "").strip(), source)
    return out


def load_videos(root: str | Path) -> list[LabelledVideo]:
    """``root/real`` and ``root/fake`` searched recursively for videos, each sorted; identity
    and source from ``root/videos.csv`` where it lists them."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"video folder not found: {root}")
    listed = _video_manifest(root)
    videos = [
        LabelledVideo(
            path, LABELS.index(label), *listed.get(path.relative_to(root).as_posix(), ("", ""))
        )
        for label in (REAL, FAKE)
        if (root / label).is_dir()
        for path in sorted((root / label).rglob("*"))
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()
    ]
    if not videos:
        raise DatasetError(
            f"no videos in {root}/real or {root}/fake (DeepfakeBench layout: DIR/real/*.mp4, "
            f"DIR/fake/*.mp4; suffixes {', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    return videos


def describe_videos(videos: Sequence[LabelledVideo]) -> str:
    fake = sum(v.label for v in videos)
    return f"{len(videos)} videos ({len(videos) - fake} real, {fake} fake)"


def score_videos(
    predictor: Predictor, videos: Sequence[LabelledVideo]
) -> tuple[list[ScoredVideo], list[FileResult]]:
    """Each video's scored frames and its score under every aggregation rule; the failures."""
    scored: list[ScoredVideo] = []
    failed: list[FileResult] = []
    results = predictor.predict([video.path for video in videos])
    for video, result in zip(videos, results, strict=True):
        probs = tuple(f.fake_prob for f in result.frames if f.fake_prob is not None)
        if not result.ok or not probs:
            failed.append(result)
            continue
        rules: tuple[AggregateRule, ...] = AGGREGATE_RULES  # type: ignore[assignment]
        scored.append(ScoredVideo(video, probs, {rule: aggregate(probs, rule) for rule in rules}))
    return scored, failed


def level_metrics(scored: Sequence[ScoredVideo], threshold: float) -> dict[str, dict[str, float]]:
    """Frame-level metrics, then video-level metrics per aggregation rule."""
    frame_labels = [v.video.label for v in scored for _ in v.frame_probs]
    frame_probs = [p for v in scored for p in v.frame_probs]
    levels = {FRAME_LEVEL: binary_metrics(frame_labels, frame_probs, threshold)}
    video_labels = [v.video.label for v in scored]
    for rule in AGGREGATE_RULES:
        probs = [v.scores[rule] for v in scored]
        levels[level_name(rule)] = binary_metrics(video_labels, probs, threshold)
    return levels


def _video_units(rule: str, scored: Sequence[ScoredVideo]) -> dict[Hashable, Unit]:
    """Identity -> its videos' labels and ``rule`` scores."""
    rows: dict[Hashable, tuple[list[int], list[float]]] = {}
    for v in scored:
        labels, scores = rows.setdefault(v.video.group, ([], []))
        labels.append(v.video.label)
        scores.append(v.scores[rule])
    return {k: (np.asarray(y, np.int64), np.asarray(s, np.float64)) for k, (y, s) in rows.items()}


def interval_reports(
    scored: Sequence[ScoredVideo], threshold: float, options: BootstrapOptions
) -> list[LevelReport]:
    """Frame level and video level per aggregation rule, each with bootstrap intervals over
    identities, over all videos and per source."""

    def frames(chosen: Sequence[ScoredVideo]) -> dict[Hashable, Unit]:
        return frame_units(
            [v.video.label for v in chosen for _ in v.frame_probs],
            [p for v in chosen for p in v.frame_probs],
            [v.video.group for v in chosen for _ in v.frame_probs],
        )

    levels: dict[str, Callable[[Sequence[ScoredVideo]], dict[Hashable, Unit]]] = {
        FRAME_LEVEL: frames
    }
    for rule in AGGREGATE_RULES:
        levels[level_name(rule)] = functools.partial(_video_units, rule)
    return sliced_reports(scored, lambda v: v.video.source, levels, threshold, options)


def evaluate_videos(
    backend: Backend,
    videos: Sequence[LabelledVideo],
    *,
    checkpoint: str,
    frames: int = 32,
    face_crop: str = "auto",
    batch_size: int = 32,
    intervals: BootstrapOptions | None = None,
) -> VideoEvaluation:
    predictor = Predictor(backend, face_crop=face_crop, frames=frames, batch_size=batch_size)
    scored, failed = score_videos(predictor, videos)
    if not scored:
        raise DatasetError(f"none of the {len(videos)} videos could be scored")
    metadata = backend.metadata
    reports = (
        () if intervals is None else tuple(interval_reports(scored, metadata.threshold, intervals))
    )
    return VideoEvaluation(
        checkpoint=checkpoint,
        version=metadata.version,
        frames=frames,
        levels=level_metrics(scored, metadata.threshold),
        videos=tuple(scored),
        failed=tuple(failed),
        reports=reports,
    )


def log_videos(videos: Sequence[LabelledVideo], root: Path) -> None:
    print(f"videos {root}: {describe_videos(videos)}", file=sys.stderr)
