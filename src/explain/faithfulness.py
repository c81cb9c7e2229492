"""``python -m src.train.evaluate --explain``: is each method's heat where the evidence is?

On the fakes of a split (face crops, as the training data), every method explains each image and
the deletion metric (:mod:`src.explain.deletion`) compares deleting its hottest 20% with deleting
a random 20%. ``--overlays DIR`` also writes example overlays (a row per image: the crop, then one
overlay per method) for the docs.

``--explain-regions slic`` makes LIME and SHAP weigh SLIC superpixels (scikit-image, installed
with the torch set) instead of the service's grid cells: the comparison behind the grid
(:func:`src.explain.methods.superpixels`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from src.core.labels import FAKE, LABELS
from src.explain.deletion import Deletion, deletion
from src.explain.gradients import GradientExplainer
from src.explain.kinds import GRADIENT_METHODS, METHODS, Method
from src.explain.methods import ExplainConfig, explain_crop, grid_cells, perturbation_heat
from src.explain.render import overlay, png
from src.models.backends import torch as torch_backend
from src.models.transforms import build_crop
from src.train.dataset import load_split

OVERLAY_EXAMPLES = 2
OVERLAY_TILE = 176  # px a side in docs/img: small enough to commit
REGIONS = ("grid", "slic")


@dataclass(frozen=True)
class MethodFaithfulness:
    method: Method
    deletions: tuple[Deletion, ...]
    seconds: float

    @property
    def n(self) -> int:
        return len(self.deletions)

    def mean(self, field: str) -> float:
        return float(np.mean([getattr(d, field) for d in self.deletions]))

    @property
    def wins(self) -> float:
        """Share of images where the heat deletion lowered the score more than random did."""
        return float(np.mean([d.heat_drop > d.random_drop for d in self.deletions]))


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("explanations (--explain)")
    group.add_argument(
        "--explain",
        action="store_true",
        help="with --data: the deletion metric of each explanation method on the split's fakes",
    )
    group.add_argument(
        "--explain-methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to measure (default: all)",
    )
    group.add_argument(
        "--explain-limit",
        type=int,
        default=24,
        help="fakes per split, spread evenly over it (default %(default)s; LIME/SHAP take "
        "about a second each)",
    )
    group.add_argument(
        "--explain-regions",
        choices=REGIONS,
        default="grid",
        help="the regions LIME and SHAP switch on and off: grid (the service's) or slic "
        "(SLIC superpixels, for comparison)",
    )
    group.add_argument(
        "--overlays", type=Path, default=None, help="write example overlays into this folder"
    )


def explain_report(args: argparse.Namespace, device: torch.device) -> tuple[str, dict[str, Any]]:
    """The table and JSON of every (checkpoint, split)."""
    tables: list[str] = []
    results: list[dict[str, Any]] = []
    for split in args.split:
        fakes = [s.path for s in load_split(args.data, split) if LABELS[s.label] == FAKE]
        chosen = spread(fakes, args.explain_limit)
        for checkpoint in args.checkpoint:
            print(f"explaining {len(chosen)} fakes of {split} with {checkpoint}", file=sys.stderr)
            measured = measure(
                checkpoint,
                chosen,
                args.explain_methods,
                device,
                args.overlays,
                regions=args.explain_regions,
            )
            title = f"{Path(checkpoint).name}@{split}, {args.explain_regions} regions"
            tables.append(format_faithfulness(title, measured))
            results.append(
                {
                    "checkpoint": str(checkpoint),
                    "split": split,
                    "regions": args.explain_regions,
                    "methods": [faithfulness_json(m) for m in measured],
                }
            )
    return "\n\n".join(tables), {"explanations": results}


def spread(items: Sequence[Path], limit: int) -> list[Path]:
    if limit <= 0 or len(items) <= limit:
        return list(items)
    indices = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(indices.tolist()))]


def measure(
    checkpoint: Path,
    images: Sequence[Path],
    methods: Sequence[Method],
    device: torch.device,
    overlays: Path | None = None,
    config: ExplainConfig | None = None,
    regions: str = "grid",
) -> list[MethodFaithfulness]:
    config = config or ExplainConfig()
    backend = torch_backend.load(checkpoint, device)
    gradients = GradientExplainer(backend.model, backend.metadata)
    to_crop = build_crop(backend.metadata)

    def score(crops: np.ndarray) -> np.ndarray:
        return np.asarray([s.fake_prob for s in backend.score(list(crops))], dtype=np.float64)

    crops = [to_crop(read_rgb(path)) for path in images]
    found: dict[Method, list[Deletion]] = {m: [] for m in methods}
    seconds: dict[Method, float] = dict.fromkeys(methods, 0.0)
    rows: list[list[np.ndarray]] = []
    for index, crop in enumerate(crops):
        row = [crop]
        for method in methods:
            started = time.perf_counter()
            if regions == "slic" and method not in GRADIENT_METHODS:
                segments = slic_superpixels(crop, config.superpixels)
                heat = perturbation_heat(method, crop, score, config, segments=segments)
            else:
                heat = explain_crop(method, crop, config, gradients=gradients, score=score)
            seconds[method] += time.perf_counter() - started
            found[method].append(deletion(crop, heat, score, seed=index))
            row.append(overlay(crop, heat))
        if index < OVERLAY_EXAMPLES:
            rows.append(row)
    if overlays is not None and rows:
        write_overlays(overlays, rows, methods)
    return [MethodFaithfulness(m, tuple(found[m]), seconds[m]) for m in methods]


def slic_superpixels(crop: np.ndarray, count: int) -> np.ndarray:
    """SLIC segments of the crop as an int (S, S) map labelled 0..K-1 (scikit-image), the grid
    where SLIC finds too few (noise or flat images): the regions LIME and SHAP used before the
    service's grid (``--explain-regions slic``)."""
    from skimage.segmentation import slic

    labels = slic(crop, n_segments=count, compactness=10.0, start_label=0, channel_axis=-1)
    _, dense = np.unique(labels, return_inverse=True)
    if int(dense.max()) + 1 >= max(4, count // 4):
        return dense.reshape(labels.shape).astype(np.int64)
    return grid_cells(crop.shape[0], count)


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_overlays(folder: Path, rows: list[list[np.ndarray]], methods: Sequence[Method]) -> None:
    """``explanations.png``: a row per example, its crop then one overlay per method."""
    side = OVERLAY_TILE
    grid = np.concatenate(
        [
            np.concatenate(
                [cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA) for tile in row],
                axis=1,
            )
            for row in rows
        ],
        axis=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "explanations.png"
    target.write_bytes(png(grid))
    print(f"wrote {target} (columns: crop, {', '.join(methods)})", file=sys.stderr)


def format_faithfulness(title: str, measured: Sequence[MethodFaithfulness]) -> str:
    header = (
        f"{'method':<8} {'n':>3} {'fake_prob':>9} {'-20% heat':>9} {'-20% rand':>9} "
        f"{'heat drop':>9} {'rand drop':>9} {'heat>rand':>9} {'s/image':>8}"
    )
    lines = [f"deletion metric, {title}", header]
    for m in measured:
        lines.append(
            f"{m.method:<8} {m.n:>3} {m.mean('original'):>9.4f} {m.mean('heat_deleted'):>9.4f} "
            f"{m.mean('random_deleted'):>9.4f} {m.mean('heat_drop'):>9.4f} "
            f"{m.mean('random_drop'):>9.4f} {m.wins:>9.0%} {m.seconds / max(m.n, 1):>8.2f}"
        )
    return "\n".join(lines)


def faithfulness_json(m: MethodFaithfulness) -> dict[str, Any]:
    return {
        "method": m.method,
        "n": m.n,
        "fake_prob": m.mean("original"),
        "heat_deleted": m.mean("heat_deleted"),
        "random_deleted": m.mean("random_deleted"),
        "heat_drop": m.mean("heat_drop"),
        "random_drop": m.mean("random_drop"),
        "heat_beats_random": m.wins,
        "seconds_per_image": m.seconds / max(m.n, 1),
    }
