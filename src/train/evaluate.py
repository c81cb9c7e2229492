"""``python -m src.train.evaluate``: score checkpoints on a data split and compare them.

Each checkpoint is loaded the way the service loads it (:func:`src.models.backends.torch.load`),
its images are prepared by the checkpoint's own :func:`src.models.transforms.build_preprocess`,
and its fake probability is read from the column its own ``labels`` name, in any order. Images
are used as they are on disk: for a ``face_crop`` model they must already be face crops, like the
training data.
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

import torch
from torch.utils.data import DataLoader

from src.core.device import resolve_device
from src.core.errors import CheckpointError, DatasetError
from src.models.backends import torch as torch_backend
from src.models.transforms import build_preprocess
from src.train.dataset import FrameDataset, Sample, describe, load_split
from src.train.metrics import compute_metrics
from src.train.trainer import predict_fake_probs

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


def evaluate_checkpoint(
    checkpoint: str | Path,
    samples: Sequence[Sample],
    split: str,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
) -> Evaluation:
    """Frame- and video-level metrics of one checkpoint on ``samples``."""
    backend = torch_backend.load(checkpoint, device)
    metadata = backend.metadata
    dataset = FrameDataset(samples, build_preprocess(metadata))
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    labels, probs, _ = predict_fake_probs(backend.model, loader, device, labels=metadata.labels)
    metrics = compute_metrics(labels, probs, groups=dataset.groups, threshold=metadata.threshold)
    return Evaluation(str(checkpoint), metadata.version, split, metrics)


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


def to_json(evaluations: Sequence[Evaluation], data_dir: str | Path) -> dict[str, Any]:
    """JSON-safe results (NaN becomes null)."""
    return {
        "data": str(data_dir),
        "results": [
            {
                "checkpoint": e.checkpoint,
                "version": e.version,
                "split": e.split,
                "metrics": {k: (None if math.isnan(v) else v) for k, v in e.metrics.items()},
            }
            for e in evaluations
        ],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.train.evaluate",
        description="Score one or more checkpoints on data splits: accuracy at the checkpoint's "
        "threshold, ROC AUC, average precision, EER (and its threshold), log loss, at frame "
        "level and at video/identity level (mean frame score per identity and label). Prints a "
        "table, then the same numbers as JSON.",
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
        required=True,
        type=Path,
        help="data folder: manifest.csv with a split column, or DIR/<split>/{real,fake}",
    )
    parser.add_argument(
        "--split",
        nargs="+",
        default=["test"],
        help="split name(s) to score (default: test); 'all' scores a flat DIR/{real,fake} folder",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="inference batch size (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes (default %(default)s)"
    )
    parser.add_argument(
        "--json-out", type=Path, default=None, help="also write the JSON to this file"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        device = torch.device(resolve_device(args.device))
        evaluations: list[Evaluation] = []
        for split in args.split:
            samples = load_split(args.data, split)
            print(f"{split}: {describe(samples)}", file=sys.stderr)
            for checkpoint in args.checkpoint:
                evaluations.append(
                    evaluate_checkpoint(
                        checkpoint, samples, split, device, args.batch_size, args.workers
                    )
                )
    except (DatasetError, CheckpointError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(evaluations))
    payload = json.dumps(to_json(evaluations, args.data), indent=2)
    print(payload)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(payload + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
