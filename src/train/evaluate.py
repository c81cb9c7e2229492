"""``python -m src.train.evaluate``: score checkpoints on a data split and compare them.

Each checkpoint is loaded the way the service loads it (:func:`src.models.backends.torch.load`),
its images are prepared by the checkpoint's own :func:`src.models.transforms.build_preprocess`,
and its fake probability is read from the column its own ``labels`` name, in any order, after
the checkpoint's calibrated temperature (the backend's ``fake_probabilities``). Images are used
as they are on disk: for a ``face_crop`` model they must already be face crops, like the training
data.

``--videos DIR`` (DeepfakeBench's ``DIR/real``, ``DIR/fake`` layout) scores whole videos the way
the service does, face crop included, at frame level and per aggregation rule
(:mod:`src.train.video_eval`).

Every metric also gets a 95% confidence interval from a bootstrap over identities
(:mod:`src.train.bootstrap`; ``--bootstrap N`` resamples, 0 for none), at frame level and at
identity level (images) or video level (videos), over all rows and per source (the manifest's
``source`` column; for videos, ``camera`` or ``synthetic`` footage from ``videos.csv``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from src.core.device import resolve_device
from src.core.errors import CheckpointError, DatasetError
from src.core.labels import LABELS
from src.engine.preprocess import FACE_CROP_MODES
from src.explain.faithfulness import add_explain_arguments, explain_report
from src.models.backends import torch as torch_backend
from src.models.transforms import build_preprocess
from src.train.bootstrap import (
    DEFAULT_RESAMPLES,
    BootstrapOptions,
    LevelReport,
    format_reports,
    reports_for,
)
from src.train.dataset import FrameDataset, Sample, describe, load_split
from src.train.metrics import compute_metrics
from src.train.video_eval import (
    LEVEL_METRICS,
    VideoEvaluation,
    evaluate_videos,
    load_videos,
    log_videos,
)

TABLE_METRICS = (
    "acc",
    "auc",
    "ap",
    "eer",
    "eer_threshold",
    "log_loss",
    "n",
    "n_fake",
    "video_acc",
    "video_auc",
    "video_ap",
    "video_eer",
    "video_log_loss",
    "video_n",
)


@dataclass(frozen=True)
class Evaluation:
    checkpoint: str
    version: str
    split: str
    metrics: dict[str, float]
    # frame- and identity-level metrics with bootstrap intervals, overall then per source
    reports: tuple[LevelReport, ...] = ()


def evaluate_checkpoint(
    checkpoint: str | Path,
    samples: Sequence[Sample],
    split: str,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    intervals: BootstrapOptions | None = None,
) -> Evaluation:
    """Frame- and video-level metrics of one checkpoint on ``samples``; with ``intervals``, also
    the bootstrap intervals over identities (overall and per source)."""
    backend = torch_backend.load(checkpoint, device)
    metadata = backend.metadata
    dataset = FrameDataset(samples, build_preprocess(metadata))
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    labels, probs = score_loader(backend, loader)
    metrics = compute_metrics(labels, probs, groups=dataset.groups, threshold=metadata.threshold)
    reports: tuple[LevelReport, ...] = ()
    if intervals is not None:
        reports = tuple(
            reports_for(
                labels,
                probs,
                dataset.groups,
                [s.source for s in samples],
                threshold=metadata.threshold,
                options=intervals,
            )
        )
    return Evaluation(str(checkpoint), metadata.version, split, metrics, reports)


def score_loader(
    backend: torch_backend.TorchBackend, loader: DataLoader[tuple[torch.Tensor, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """``(data labels, fake probabilities)`` over ``loader`` through the backend's own
    ``fake_probabilities``: the checkpoint's label order and calibrated temperature, as served."""
    labels: list[int] = []
    probs: list[float] = []
    for images, targets in loader:
        probs += backend.fake_probabilities(images)
        labels += targets.tolist()
    return np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.4f}"


def format_table(evaluations: Sequence[Evaluation]) -> str:
    """Metrics as rows, one column per (checkpoint, split)."""
    headers = [f"{Path(e.checkpoint).name}@{e.split}" for e in evaluations]
    if len({Path(e.checkpoint).name for e in evaluations}) < len(
        {e.checkpoint for e in evaluations}
    ):
        headers = [f"{e.checkpoint}@{e.split}" for e in evaluations]
    keys = [k for k in TABLE_METRICS if any(k in e.metrics for e in evaluations)]
    width = max([len("metric"), *map(len, keys)])
    widths = [max(len(h), 8) for h in headers]
    lines = [
        "  ".join(
            ["metric".ljust(width), *(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
        )
    ]
    for key in keys:
        cells = [
            _fmt(e.metrics.get(key)).rjust(w) for e, w in zip(evaluations, widths, strict=True)
        ]
        lines.append("  ".join([key.ljust(width), *cells]))
    return "\n".join(lines)


def _json_safe(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else v) for k, v in metrics.items()}


def to_json(evaluations: Sequence[Evaluation], data_dir: str | Path) -> dict[str, Any]:
    """JSON-safe results (NaN becomes null)."""
    return {
        "data": str(data_dir),
        "results": [
            {
                "checkpoint": e.checkpoint,
                "version": e.version,
                "split": e.split,
                "metrics": _json_safe(e.metrics),
                "intervals": [r.as_json() for r in e.reports],
            }
            for e in evaluations
        ],
    }


def format_interval_table(
    evaluations: Sequence[Evaluation],
    video_evaluations: Sequence[VideoEvaluation] = (),
    confidence: float = 0.95,
) -> str:
    """One line per (split or videos, source, level) with ``value [low, high]`` cells."""
    runs = [(e.checkpoint, e.version) for e in evaluations] + [
        (v.checkpoint, v.version) for v in video_evaluations
    ]
    names = _model_names(runs)
    several = len(set(names.values())) > 1
    rows: list[tuple[str, LevelReport]] = []
    for e in evaluations:
        title = f"{names[e.checkpoint]}@{e.split}" if several else e.split
        rows += [(title, r) for r in e.reports]
    for v in video_evaluations:
        title = f"{names[v.checkpoint]}@videos" if several else "videos"
        rows += [(title, r) for r in v.reports]
    return format_reports(rows, confidence) if rows else ""


def _model_names(runs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Checkpoint -> how the interval table names it: its version where the versions tell the
    checkpoints apart, else its file name, else its path."""
    checkpoints = list(dict.fromkeys(c for c, _ in runs))
    versions = dict(runs)
    for name in (lambda c: versions[c], lambda c: Path(c).name, str):
        named = {c: name(c) for c in checkpoints}
        if len(set(named.values())) == len(checkpoints):
            return named
    return {c: c for c in checkpoints}


def format_video_table(evaluation: VideoEvaluation) -> str:
    """Metrics as rows, one column per level (frame, then video per aggregation rule)."""
    levels = list(evaluation.levels)
    width = max(len("metric"), *map(len, LEVEL_METRICS))
    widths = [max(len(level), 8) for level in levels]
    title = (
        f"{Path(evaluation.checkpoint).name} ({evaluation.version}) on videos, "
        f"{evaluation.frames} frames each"
    )
    lines = [
        title,
        "  ".join(
            ["metric".ljust(width), *(h.rjust(w) for h, w in zip(levels, widths, strict=True))]
        ),
    ]
    for key in LEVEL_METRICS:
        cells = [
            _fmt(evaluation.levels[level].get(key)).rjust(w)
            for level, w in zip(levels, widths, strict=True)
        ]
        lines.append("  ".join([key.ljust(width), *cells]))
    for result in evaluation.failed:
        error = result.error
        reason = f"{error.code}: {error.message}" if error else "no frame scored"
        lines.append(f"not scored: {result.path} ({reason})")
    return "\n".join(lines)


def video_evaluation_json(evaluation: VideoEvaluation) -> dict[str, Any]:
    """JSON-safe results (NaN becomes null), with every video's scores."""
    return {
        "checkpoint": evaluation.checkpoint,
        "version": evaluation.version,
        "frames": evaluation.frames,
        "levels": {level: _json_safe(m) for level, m in evaluation.levels.items()},
        "intervals": [r.as_json() for r in evaluation.reports],
        "videos": [
            {
                "path": str(v.video.path),
                "label": LABELS[v.video.label],
                "identity": v.video.identity,
                "source": v.video.source,
                "frames_scored": len(v.frame_probs),
                "frame_mean": float(np.mean(v.frame_probs)),
                "scores": v.scores,
            }
            for v in evaluation.videos
        ],
        "failed": [
            {
                "path": r.path,
                "error": None
                if r.error is None
                else {"code": r.error.code, "message": r.error.message},
            }
            for r in evaluation.failed
        ],
    }


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--batch-size``, ``--workers``: how a checkpoint scores a split (shared by
    ``src.train.calibrate``)."""
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="inference batch size (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.train.evaluate",
        description="Score one or more checkpoints on data splits: accuracy at the checkpoint's "
        "threshold, ROC AUC, average precision, EER (and its threshold), log loss, at frame "
        "level and at video/identity level (mean frame score per identity and label); with "
        "--videos, on whole videos: frame level and video level per aggregation rule. Prints "
        "a table, the same metrics with bootstrap confidence intervals over identities (overall "
        "and per source), then everything as JSON.",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        type=Path,
        help="checkpoint to score; repeat to compare several",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data folder: manifest.csv with a split column, or DIR/<split>/{real,fake}",
    )
    parser.add_argument(
        "--split",
        nargs="+",
        default=["test"],
        help="split name(s) to score (default: test); 'all' scores a flat DIR/{real,fake} folder",
    )
    parser.add_argument(
        "--videos",
        type=Path,
        default=None,
        help="folder of labelled videos, DeepfakeBench layout: DIR/real/*.mp4 and "
        "DIR/fake/*.mp4 (searched recursively); frame- and video-level metrics per "
        "aggregation rule",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=32,
        help="frames sampled uniformly over each video (--videos; default %(default)s)",
    )
    parser.add_argument(
        "--face-crop",
        choices=FACE_CROP_MODES,
        default="auto",
        help="crop the followed face in video frames (--videos); auto: as the checkpoint was "
        "trained (default %(default)s)",
    )
    add_scoring_arguments(parser)
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="bootstrap resamples of the identities for the confidence intervals "
        "(default %(default)s; 0: no intervals)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the intervals (default %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0)"
    )
    parser.add_argument(
        "--missing-ok",
        action="store_true",
        help="skip (with a note) the --split names the data does not have and a --videos folder "
        "that does not exist, instead of failing",
    )
    add_explain_arguments(parser)
    parser.add_argument(
        "--json-out", type=Path, default=None, help="also write the JSON to this file"
    )
    parser.add_argument(
        "--no-json",
        action="store_true",
        help="print the tables only (the JSON still goes to --json-out)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is None and args.videos is None:
        parser.error("give --data (image splits), --videos (a folder of videos), or both")
    if args.frames < 1:
        parser.error(f"--frames must be at least 1, not {args.frames}")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be 0 or more, not {args.bootstrap}")
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be between 0 and 1, not {args.confidence}")
    try:
        device = torch.device(resolve_device(args.device))
        if args.missing_ok:
            _drop_missing(args)
        evaluations = _evaluate_splits(args, device) if args.data is not None else []
        explained = explain_report(args, device) if args.explain and args.data else None
        video_evaluations = _evaluate_videos(args, device) if args.videos is not None else []
    except (DatasetError, CheckpointError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    payload: dict[str, Any] = {}
    if args.data is not None:
        print(format_table(evaluations))
        payload.update(to_json(evaluations, args.data))
    if args.videos is not None:
        print("\n\n".join(format_video_table(e) for e in video_evaluations))
        payload["videos"] = str(args.videos)
        payload["video_results"] = [video_evaluation_json(e) for e in video_evaluations]
    intervals = format_interval_table(evaluations, video_evaluations, args.confidence)
    if intervals:
        print()
        print(intervals)
    if explained is not None:
        print(explained[0])
        payload.update(explained[1])
    text = json.dumps(payload, indent=2)
    if not args.no_json:
        print(text)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


def _evaluate_splits(args: argparse.Namespace, device: torch.device) -> list[Evaluation]:
    evaluations: list[Evaluation] = []
    for split in args.split:
        samples = load_split(args.data, split)
        print(f"{split}: {describe(samples)}", file=sys.stderr)
        for checkpoint in args.checkpoint:
            evaluations.append(
                evaluate_checkpoint(
                    checkpoint,
                    samples,
                    split,
                    device,
                    args.batch_size,
                    args.workers,
                    _bootstrap_options(args),
                )
            )
    return evaluations


def _drop_missing(args: argparse.Namespace) -> None:
    """``--missing-ok``: leave out the splits ``--data`` lacks and a missing ``--videos``."""
    if args.data is not None:
        kept = []
        for split in args.split:
            try:
                load_split(args.data, split)
            except DatasetError as exc:
                print(f"note: split {split!r} skipped: {exc}", file=sys.stderr)
                continue
            kept.append(split)
        args.split = kept
        if not kept:
            args.data = None
    if args.videos is not None and not Path(args.videos).is_dir():
        print(f"note: videos skipped: {args.videos} is not a folder", file=sys.stderr)
        args.videos = None
    if args.data is None and args.videos is None:
        raise DatasetError("nothing to evaluate: no split and no videos found")


def _bootstrap_options(args: argparse.Namespace) -> BootstrapOptions | None:
    if args.bootstrap <= 0:
        return None
    return BootstrapOptions(args.bootstrap, args.confidence, args.bootstrap_seed)


def _evaluate_videos(args: argparse.Namespace, device: torch.device) -> list[VideoEvaluation]:
    videos = load_videos(args.videos)
    log_videos(videos, args.videos)
    return [
        evaluate_videos(
            torch_backend.load(checkpoint, device),
            videos,
            checkpoint=str(checkpoint),
            frames=args.frames,
            face_crop=args.face_crop,
            batch_size=args.batch_size,
            intervals=_bootstrap_options(args),
        )
        for checkpoint in args.checkpoint
    ]


if __name__ == "__main__":
    raise SystemExit(main())
