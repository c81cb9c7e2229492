"""The training loop: one epoch of training, validation, and ``fit`` that ties them together.

``fit`` writes into ``out_dir``: ``metrics.csv`` (one row per epoch, :mod:`src.train.metrics_csv`),
``last.pt`` (resumable) and ``best.pt`` (the shipping checkpoint: weights and metadata, no
optimiser state), and with ``keep_top`` the best epochs; :mod:`src.train.saver` decides which.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from src.core.device import resolve_device
from src.core.errors import CheckpointError, DatasetError
from src.core.labels import LABELS, fake_column
from src.models.checkpoint import IMAGENET_MEAN, IMAGENET_STD, ModelMetadata
from src.models.network import build_model
from src.models.transforms import build_preprocess
from src.train.checkpoint import (
    ResumePoint,
    TrainingState,
    capture_rng_state,
    finite_metrics,
    load_resume_point,
    resolve_resume,
    restore_rng_state,
)
from src.train.config import TrainConfig
from src.train.dataset import (
    FrameDataset,
    PairedShuffle,
    Sample,
    TrainAugment,
    describe,
    discover_splits,
    pair_units,
    seed_worker,
)
from src.train.metrics import compute_metrics
from src.train.metrics_csv import METRICS_NAME, MetricsCsv
from src.train.pretrained import initialise
from src.train.saver import CheckpointSaver

__all__ = [
    "FitResult",
    "TrainConfig",
    "autocast_dtype",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "lr_factor_fn",
    "predict_fake_probs",
    "train_one_epoch",
    "validate",
]

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Where a run left its files, and its best epoch (None when no epoch ran)."""

    out_dir: Path
    best_path: Path | None
    last_path: Path
    best_epoch: int | None
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where supported, else fp16 (with a grad scaler)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_mode(device: torch.device) -> Iterator[None]:
    """Deterministic kernels where PyTorch has them (warn, not fail, where it has not)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous_benchmark


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> Optimizer:
    """AdamW or Nesterov SGD; biases and norm parameters get no weight decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name == "adamw":
        return AdamW(groups, lr=lr)
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor_fn(
    kind: str,
    total_steps: int,
    warmup_steps: int = 0,
    min_ratio: float = 0.01,
    step_every: int = 1,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """The multiplier of the base learning rate at optimiser step ``step`` (0-based)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        after = step - warmup_steps
        if kind == "cosine":
            progress = min(1.0, after / max(1, total_steps - warmup_steps))
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "step":
            return float(gamma ** (after // max(1, step_every)))
        return 1.0

    return factor


def build_scheduler(optimizer: Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A per-step schedule (optional linear warmup, then cosine, step or constant)."""
    factor = lr_factor_fn(
        config.scheduler,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        min_ratio=config.min_lr_ratio,
        step_every=config.step_epochs * steps_per_epoch,
        gamma=config.step_gamma,
    )
    return LambdaLR(optimizer, lr_lambda=factor)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    device: torch.device,
    *,
    loss_fn: nn.Module | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    description: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_steps`` batches); returns mean ``loss`` and more."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.train()
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    loss_sum, seen, steps = 0.0, 0, 0
    bar = tqdm(total=total, desc=description, leave=False, disable=not progress, dynamic_ncols=True)
    try:
        for images, labels in loader:
            if steps >= total:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                loss = loss_fn(model(images), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {steps}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            batch = labels.shape[0]
            loss_sum += float(loss.detach()) * batch
            seen += batch
            steps += 1
            bar.update()
            bar.set_postfix(
                loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
            )
    finally:
        bar.close()
    return {
        "loss": loss_sum / seen if seen else math.nan,
        "lr": float(optimizer.param_groups[0]["lr"]),
        "steps": float(steps),
        "images": float(seen),
    }


def _target_columns(labels: Sequence[str]) -> torch.Tensor:
    """Data label ``i`` (``LABELS[i]``) -> its column in a model whose classes are ``labels``."""
    missing = [name for name in LABELS if name not in labels]
    if missing:
        raise ValueError(f"model labels {list(labels)} lack {missing}")
    return torch.tensor([list(labels).index(name) for name in LABELS])


def predict_fake_probs(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    labels: Sequence[str] = LABELS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(data labels, fake probabilities, mean cross-entropy)`` over ``loader``, in its order.

    ``labels`` is the model's class order (its checkpoint's ``labels``), so a model trained with
    another order is read and scored right.
    """
    model.eval()
    columns = _target_columns(labels).to(device)
    labels_out: list[np.ndarray] = []
    probs_out: list[np.ndarray] = []
    loss_sum, seen = 0.0, 0
    with torch.inference_mode():
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            loss = nn.functional.cross_entropy(logits, columns[targets], reduction="sum")
            loss_sum += float(loss)
            seen += targets.shape[0]
            probs_out.append(fake_column(torch.softmax(logits, dim=1), labels).cpu().numpy())
            labels_out.append(targets.cpu().numpy())
    if not seen:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), math.nan
    return np.concatenate(labels_out), np.concatenate(probs_out), loss_sum / seen


def validate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    *,
    groups: list[str] | None = None,
    amp_dtype: torch.dtype | None = None,
    threshold: float = 0.5,
    labels: Sequence[str] = LABELS,
) -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` (see :func:`src.train.metrics.compute_metrics`)."""
    targets, probs, loss = predict_fake_probs(model, loader, device, amp_dtype, labels)
    metrics = {"loss": loss}
    metrics.update(compute_metrics(targets, probs, groups=groups, threshold=threshold))
    return metrics


def _format_summary(
    epoch: int,
    epochs: int,
    train: dict[str, float],
    val: dict[str, float],
    seconds: float,
    best: bool,
) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"train_loss {train['loss']:.4f}"]
    for key in ("loss", "auc", "acc", "eer", "video_auc"):
        if key in val:
            parts.append(f"val_{key} {val[key]:.4f}")
    parts += [f"lr {train['lr']:.2e}", f"{seconds:.1f}s"]
    if best:
        parts.append("*best*")
    return "  ".join(parts)


def _make_loader(
    dataset: FrameDataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device,
    drop_last: bool = False,
    sampler: Sampler[int] | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
    )


def _load_model(
    config: TrainConfig,
    resume: ResumePoint | None,
    resume_path: Path | None,
    log: Callable[[str], None],
) -> tuple[nn.Module, ModelMetadata]:
    """The network (initial or resumed weights) and the metadata every checkpoint carries."""
    model = build_model(config.arch, num_classes=len(LABELS))
    pretrained_cfg = getattr(model, "pretrained_cfg", {}) or {}
    metadata = ModelMetadata(
        architecture=config.arch,
        labels=list(LABELS),
        input_size=config.image_size,
        mean=tuple(pretrained_cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained_cfg.get("std", IMAGENET_STD)),
        version=config.version,
        threshold=0.5,
        face_crop=config.face_crop,
        face_margin=config.face_margin,
        train_args=config.as_record(),
    )
    if resume is None:
        assert config.pretrained is not None
        log(f"init: {initialise(model, config.arch, config.pretrained)}")
        return model, metadata
    saved = resume.metadata
    if (saved.architecture, saved.input_size) != (config.arch, config.image_size):
        raise CheckpointError(
            f"{resume_path} is {saved.architecture} at {saved.input_size}px but this run "
            f"asks for {config.arch} at {config.image_size}px"
        )
    model.load_state_dict(resume.state_dict)
    return model, metadata


@dataclass
class _Run:
    """What ``fit`` builds before the first epoch, and the steps of one epoch on it."""

    config: TrainConfig
    device: torch.device
    model: nn.Module
    metadata: ModelMetadata
    train_set: FrameDataset
    val_set: FrameDataset
    train_loader: DataLoader[tuple[torch.Tensor, int]]
    val_loader: DataLoader[tuple[torch.Tensor, int]]
    loader_generator: torch.Generator
    steps_per_epoch: int
    optimizer: Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        device: torch.device,
        splits: dict[str, list[Sample]],
        model: nn.Module,
        metadata: ModelMetadata,
    ) -> _Run:
        model.to(device)
        preprocess = build_preprocess(metadata)
        generator = torch.Generator()
        paired = (
            PairedShuffle(pair_units(splits["train"]), generator) if config.pair_views else None
        )
        train_set = FrameDataset(
            splits["train"],
            preprocess,
            TrainAugment(config.image_size),
            seed=config.seed,
            augment_keys=None if paired is None else paired.augment_keys(),
        )
        val_set = FrameDataset(splits["val"], preprocess)
        train_loader = _make_loader(
            train_set,
            config.batch_size,
            config.workers,
            shuffle=True,
            generator=generator,
            device=device,
            drop_last=len(train_set) > config.batch_size,
            sampler=paired,
        )
        val_loader = _make_loader(
            val_set, config.batch_size, config.workers, shuffle=False, generator=None, device=device
        )
        steps = len(train_loader)
        if config.max_steps_per_epoch is not None:
            steps = max(1, min(steps, config.max_steps_per_epoch))
        optimizer = build_optimizer(
            model, config.optimizer, config.lr, config.weight_decay, config.momentum
        )
        amp_dtype = autocast_dtype(config.amp, device)
        return cls(
            config=config,
            device=device,
            model=model,
            metadata=metadata,
            train_set=train_set,
            val_set=val_set,
            train_loader=train_loader,
            val_loader=val_loader,
            loader_generator=generator,
            steps_per_epoch=steps,
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, config, steps),
            scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
            loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
            amp_dtype=amp_dtype,
        )

    def restore(self, state: TrainingState) -> None:
        """Optimiser, scheduler, grad scaler and RNG exactly as ``last.pt`` left them."""
        self.optimizer.load_state_dict(state.optimizer)
        if state.scheduler is not None:
            self.scheduler.load_state_dict(state.scheduler)
        if state.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        restore_rng_state(state.rng)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch whose data order and augmentation depend only on the seed and ``epoch``."""
        config = self.config
        self.train_set.set_epoch(epoch)
        self.loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
        return train_one_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            self.scheduler,
            self.device,
            loss_fn=self.loss_fn,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            max_steps=self.steps_per_epoch,
            description=f"epoch {epoch}/{config.epochs}",
            progress=config.progress,
        )

    def validate(self) -> dict[str, float]:
        return validate(
            self.model,
            self.val_loader,
            self.device,
            groups=self.val_set.groups,
            amp_dtype=self.amp_dtype,
            threshold=self.metadata.threshold,
            labels=self.metadata.labels,
        )

    def epoch_metadata(self, epoch: int, val_metrics: dict[str, float]) -> ModelMetadata:
        return self.metadata.model_copy(
            update={
                "metrics": finite_metrics({**val_metrics, "epoch": float(epoch)}),
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )

    def training_state(self, epoch: int, global_step: int) -> TrainingState:
        """Resume state; the saver fills in the best score and epoch."""
        return TrainingState(
            epoch=epoch,
            global_step=global_step,
            best_score=None,
            best_epoch=None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=capture_rng_state(),
        )


def _metrics_row(
    epoch: int,
    step: int,
    train: dict[str, float],
    val: dict[str, float],
    seconds: float,
    best: bool,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "train_loss": train["loss"],
        "lr": train["lr"],
        **{f"val_{k}": v for k, v in val.items()},
        "epoch_seconds": round(seconds, 2),
        "best": int(best),
    }


def _store_reference(
    path: Path,
    samples: Sequence[Sample],
    config: TrainConfig,
    device: torch.device,
    log: Callable[[str], None],
) -> None:
    """The validation distribution of the drift features and fake_prob, into ``best.pt``
    (``src.train.reference``); a failure costs the drift reference, never the trained model."""
    from src.train.reference import attach_reference

    try:
        reference = attach_reference(
            path, samples, split="val", data=str(config.data_dir), device=str(device)
        )
    except (DatasetError, CheckpointError) as exc:
        log(f"no reference statistics stored: {exc}")
        return
    log(f"reference statistics of {reference.n} val images stored in {path}")


def fit(config: TrainConfig, log: Callable[[str], None] = print) -> FitResult:
    """Train, validate every epoch, and keep ``best.pt``/``last.pt`` in ``config.out_dir``."""
    device = torch.device(resolve_device(config.device))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    resume_path = resolve_resume(config.resume, config.out_dir)
    seed_everything(config.seed)
    with deterministic_mode(device):
        splits = discover_splits(
            config.data_dir, seed=config.seed, val_fraction=config.val_fraction
        )
        log(f"train: {describe(splits['train'])}")
        log(f"val:   {describe(splits['val'])}")
        resume = load_resume_point(resume_path) if resume_path else None
        run = _Run.build(config, device, splits, *_load_model(config, resume, resume_path, log))
        saver = CheckpointSaver(config.out_dir, config.best_metric, keep_top=config.keep_top)
        metrics_csv = MetricsCsv(config.out_dir / METRICS_NAME)
        state = resume.training if resume else None
        saver.restore(state)
        start_epoch, global_step = (state.epoch, state.global_step) if state else (0, 0)
        if state is None:
            metrics_csv.reset()
        else:
            run.restore(state)
            metrics_csv.truncate_after(start_epoch)
            log(f"resumed from {resume_path} after epoch {start_epoch}")

        history: list[dict[str, Any]] = []
        for epoch in range(start_epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            train_stats = run.train_epoch(epoch)
            global_step += int(train_stats["steps"])
            val_metrics = run.validate()
            score = saver.score({**val_metrics, "epoch": float(epoch)})
            improved = saver.is_better(score)
            seconds = time.perf_counter() - started
            row = _metrics_row(epoch, global_step, train_stats, val_metrics, seconds, improved)
            metrics_csv.append(row)
            history.append(row)
            metadata = run.epoch_metadata(epoch, val_metrics)
            saver.save(epoch, score, run.model, metadata, run.training_state(epoch, global_step))
            log(_format_summary(epoch, config.epochs, train_stats, val_metrics, seconds, improved))
    if start_epoch >= config.epochs:
        log(f"nothing to do: {resume_path} already finished epoch {start_epoch}")
    elif saver.best_path is not None:
        _store_reference(saver.best_path, splits["val"], config, device, log)
    return FitResult(
        out_dir=config.out_dir,
        best_path=saver.best_path,
        last_path=saver.last_path,
        best_epoch=saver.best_epoch,
        best_score=saver.best_score,
        history=history,
    )
