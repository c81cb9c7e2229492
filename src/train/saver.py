"""Which checkpoints a run keeps: ``best.pt``, ``last.pt`` and optionally its top-N epochs.

Modelled on timm's ``CheckpointSaver`` (``timm/utils/checkpoint_saver.py``): one object owns the
"is this epoch better" rule (``decreasing`` picks ``operator.lt`` or ``operator.gt``) so the
best file, the resume state and the top-N files can never disagree about it. Every file is
written atomically by :mod:`src.train.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from src.models.checkpoint import ModelMetadata, read_checkpoint
from src.train.checkpoint import BEST_NAME, LAST_NAME, TrainingState, save_best, save_last

LOWER_IS_BETTER = frozenset(
    {"loss", "log_loss", "eer", "video_loss", "video_log_loss", "video_eer"}
)
EPOCH_PATTERN = re.compile(r"^epoch-(\d+)\.pt$")


class CheckpointSaver:
    """Keeps ``best.pt`` (the best epoch by ``metric``), ``last.pt`` (resumable) and, with
    ``keep_top`` > 0, the ``keep_top`` best epochs as ``epoch-NNN.pt``.

    ``decreasing`` defaults to whether ``metric`` is a loss or an error rate. A NaN score never
    beats a real one, but the first score of a run is always the best so far.
    """

    def __init__(
        self,
        out_dir: Path,
        metric: str,
        *,
        decreasing: bool | None = None,
        keep_top: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.metric = metric
        self.decreasing = metric in LOWER_IS_BETTER if decreasing is None else decreasing
        self.keep_top = keep_top
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.top: list[tuple[float, int]] = []
        self._cmp = operator.lt if self.decreasing else operator.gt

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_NAME

    @property
    def best_path(self) -> Path | None:
        path = self.out_dir / BEST_NAME
        return path if path.is_file() else None

    def epoch_path(self, epoch: int) -> Path:
        return self.out_dir / f"epoch-{epoch:03d}.pt"

    def score(self, metrics: Mapping[str, float]) -> float:
        """This saver's metric out of an epoch's validation metrics."""
        if self.metric not in metrics:
            raise ValueError(f"--best-metric {self.metric!r} is not one of {sorted(metrics)}")
        return metrics[self.metric]

    def is_better(self, score: float) -> bool:
        """Whether ``score`` beats the best so far; NaN never wins, anything beats a NaN best."""
        if self.best_score is None:
            return True
        if math.isnan(score):
            return False
        return math.isnan(self.best_score) or bool(self._cmp(score, self.best_score))

    def restore(self, state: TrainingState | None) -> None:
        """Continue after ``state``'s epoch (``None``: a fresh run): its best, and the top-N
        files it had written; files of later epochs (a crash left them) are deleted."""
        self.best_score = state.best_score if state else None
        self.best_epoch = state.best_epoch if state else None
        self.top = []
        if self.keep_top <= 0:
            return
        done = state.epoch if state else 0
        for path in self.out_dir.glob("epoch-*.pt"):
            match = EPOCH_PATTERN.match(path.name)
            if not match:
                continue
            epoch = int(match.group(1))
            if epoch > done:
                path.unlink()
            else:
                metrics = read_checkpoint(path).metadata.metrics
                self.top.append((metrics.get(self.metric, math.nan), epoch))
        self._prune(self.top)

    def save(
        self,
        epoch: int,
        score: float,
        model: nn.Module,
        metadata: ModelMetadata,
        training: TrainingState,
    ) -> bool:
        """Record ``epoch``'s score and write, in this order, ``best.pt`` if it improved, its
        top-N file if it ranks, and ``last.pt`` (carrying the updated best). Returns whether
        it improved."""
        improved = self.is_better(score)
        if improved:
            self.best_score, self.best_epoch = score, epoch
            save_best(self.out_dir / BEST_NAME, model, metadata)
        if self.keep_top > 0:
            kept = self._prune([*self.top, (score, epoch)])
            if epoch in {e for _, e in kept}:
                save_best(self.epoch_path(epoch), model, metadata)
        training = dataclasses.replace(
            training, best_score=self.best_score, best_epoch=self.best_epoch
        )
        save_last(self.last_path, model, metadata, training)
        return improved

    def _rank(self, entry: tuple[float, int]) -> tuple[bool, float, int]:
        """Sort key, best first: NaN last, ties to the earlier epoch."""
        score, epoch = entry
        if math.isnan(score):
            return True, 0.0, epoch
        return False, score if self.decreasing else -score, epoch

    def _prune(self, entries: list[tuple[float, int]]) -> list[tuple[float, int]]:
        """Keep the ``keep_top`` best of ``entries`` and delete the files of the others."""
        ranked = sorted(entries, key=self._rank)
        for _, epoch in ranked[self.keep_top :]:
            self.epoch_path(epoch).unlink(missing_ok=True)
        self.top = ranked[: self.keep_top]
        return self.top
