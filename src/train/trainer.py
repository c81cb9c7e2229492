"""The training loop: one epoch of training, validation, and ``fit`` that ties them together.

``fit`` writes into ``out_dir``: ``metrics.csv`` (one row per epoch), ``last.pt`` (resumable) and
``best.pt`` (the shipping checkpoint: weights and metadata, no optimiser state).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from src.exceptions import CheckpointError
from src.models.checkpoint import IMAGENET_MEAN, IMAGENET_STD, ModelMetadata
from src.models.classifier import build_model
from src.models.transforms import build_preprocess
from src.train.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    TrainingState,
    capture_rng_state,
    finite_metrics,
    load_resume_point,
    resolve_resume,
    restore_rng_state,
    save_best,
    save_last,
)
from src.train.dataset import (
    LABELS,
    FrameDataset,
    TrainAugment,
    describe,
    discover_splits,
    seed_worker,
)
from src.train.metrics import compute_metrics
from src.train.pretrained import default_pretrained, initialise

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
LOWER_IS_BETTER = frozenset(
    {"loss", "log_loss", "eer", "video_loss", "video_log_loss", "video_eer"}
)
FAKE_INDEX = LABELS.index("fake")


@dataclass
class TrainConfig:
    """Every knob of a training run; ``python -m src.train --help`` documents each."""

    data_dir: Path
    out_dir: Path
    arch: str = "efficientnet_lite0"
    pretrained: str | None = None  # None: "imagenet" where available, else "none"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    step_epochs: int = 3
    step_gamma: float = 0.1
    image_size: int = 224
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    resume: str | None = None
    best_metric: str = "auc"
    workers: int = 2
    face_crop: bool = False
    face_margin: float = 1.3
    version: str = "0.1.0"
    max_steps_per_epoch: int | None = None
    val_fraction: float = 0.2
    label_smoothing: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.out_dir = Path(self.out_dir)
        if self.pretrained is None:
            self.pretrained = default_pretrained(self.arch)
        if self.optimizer not in {"adamw", "sgd"}:
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.scheduler not in {"cosine", "step", "none"}:
            raise ValueError(f"scheduler must be cosine, step or none, got {self.scheduler!r}")
        if self.amp not in {"auto", "bf16", "fp16", "off"}:
            raise ValueError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        self.best_metric = self.best_metric.removeprefix("val_")

    def as_record(self) -> dict[str, Any]:
        """JSON-friendly copy for the checkpoint's ``train_args``."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class FitResult:
    out_dir: Path
    best_path: Path | None
    last_path: Path
    best_epoch: int | None
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def select_device(spec: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {spec}: CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA devices")
    return device


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


def predict_fake_probs(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(labels, fake probabilities, mean cross-entropy)`` over ``loader``, in its order."""
    model.eval()
    labels_out: list[np.ndarray] = []
    probs_out: list[np.ndarray] = []
    loss_sum, seen = 0.0, 0
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            seen += labels.shape[0]
            probs_out.append(torch.softmax(logits, dim=1)[:, FAKE_INDEX].cpu().numpy())
            labels_out.append(labels.cpu().numpy())
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
) -> dict[str, float]:
    """Metrics of ``model`` on ``loader`` (see :func:`src.train.metrics.compute_metrics`)."""
    labels, probs, loss = predict_fake_probs(model, loader, device, amp_dtype)
    metrics = {"loss": loss}
    metrics.update(compute_metrics(labels, probs, groups=groups, threshold=threshold))
    return metrics


def is_better(score: float, best: float | None, metric: str) -> bool:
    """Whether ``score`` beats ``best``; NaN never wins, anything beats a missing or NaN best."""
    if best is None:
        return True
    if math.isnan(score):
        return False
    if math.isnan(best):
        return True
    return score < best if metric in LOWER_IS_BETTER else score > best


def _append_metrics_row(path: Path, row: dict[str, Any]) -> None:
    exists = path.is_file() and path.stat().st_size > 0
    if exists:
        with path.open(newline="", encoding="utf-8") as handle:
            fieldnames = next(csv.reader(handle))
    else:
        fieldnames = list(row)
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore", restval="")
        if not exists:
            writer.writeheader()
        writer.writerow(row)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep only rows of epochs ``<= last_epoch`` (a crash may have left a later row)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        rows = [row for row in reader if int(row["epoch"]) <= last_epoch]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


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
) -> DataLoader[tuple[torch.Tensor, int]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
    )


def fit(config: TrainConfig, log: Callable[[str], None] = print) -> FitResult:
    """Train, validate every epoch, and keep ``best.pt``/``last.pt`` in ``config.out_dir``."""
    device = select_device(config.device)
    amp_dtype = autocast_dtype(config.amp, device)
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_NAME
    resume_path = resolve_resume(config.resume, out_dir)

    seed_everything(config.seed)
    with deterministic_mode(device):
        splits = discover_splits(
            config.data_dir, seed=config.seed, val_fraction=config.val_fraction
        )
        log(f"train: {describe(splits['train'])}")
        log(f"val:   {describe(splits['val'])}")

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
        resume = load_resume_point(resume_path) if resume_path else None
        if resume is None:
            assert config.pretrained is not None
            log(f"init: {initialise(model, config.arch, config.pretrained)}")
        else:
            saved = resume.metadata
            if (saved.architecture, saved.input_size) != (config.arch, config.image_size):
                raise CheckpointError(
                    f"{resume_path} is {saved.architecture} at {saved.input_size}px but this run "
                    f"asks for {config.arch} at {config.image_size}px"
                )
            model.load_state_dict(resume.state_dict)
        model.to(device)

        preprocess = build_preprocess(metadata)
        train_set = FrameDataset(
            splits["train"], preprocess, TrainAugment(config.image_size), seed=config.seed
        )
        val_set = FrameDataset(splits["val"], preprocess)
        loader_generator = torch.Generator()
        train_loader = _make_loader(
            train_set,
            config.batch_size,
            config.workers,
            shuffle=True,
            generator=loader_generator,
            device=device,
            drop_last=len(train_set) > config.batch_size,
        )
        val_loader = _make_loader(
            val_set, config.batch_size, config.workers, shuffle=False, generator=None, device=device
        )
        steps_per_epoch = len(train_loader)
        if config.max_steps_per_epoch is not None:
            steps_per_epoch = max(1, min(steps_per_epoch, config.max_steps_per_epoch))

        optimizer = build_optimizer(
            model, config.optimizer, config.lr, config.weight_decay, config.momentum
        )
        scheduler = build_scheduler(optimizer, config, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

        start_epoch, global_step = 0, 0
        best_score: float | None = None
        best_epoch: int | None = None
        if resume is not None:
            state = resume.training
            optimizer.load_state_dict(state.optimizer)
            if state.scheduler is not None:
                scheduler.load_state_dict(state.scheduler)
            if state.scaler and scaler.is_enabled():
                scaler.load_state_dict(state.scaler)
            start_epoch, global_step = state.epoch, state.global_step
            best_score, best_epoch = state.best_score, state.best_epoch
            restore_rng_state(state.rng)
            _truncate_metrics(metrics_path, start_epoch)
            log(f"resumed from {resume_path} after epoch {start_epoch}")
        elif metrics_path.exists():
            metrics_path.unlink()

        history: list[dict[str, Any]] = []
        best_path = out_dir / BEST_NAME if (out_dir / BEST_NAME).is_file() else None
        last_path = out_dir / LAST_NAME
        for epoch in range(start_epoch + 1, config.epochs + 1):
            started = time.perf_counter()
            train_set.set_epoch(epoch)
            loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
            train_stats = train_one_epoch(
                model,
                train_loader,
                optimizer,
                scheduler,
                device,
                loss_fn=loss_fn,
                amp_dtype=amp_dtype,
                scaler=scaler,
                max_steps=steps_per_epoch,
                description=f"epoch {epoch}/{config.epochs}",
                progress=config.progress,
            )
            global_step += int(train_stats["steps"])
            val_metrics = validate(
                model,
                val_loader,
                device,
                groups=val_set.groups,
                amp_dtype=amp_dtype,
                threshold=metadata.threshold,
            )
            if config.best_metric not in val_metrics:
                raise ValueError(
                    f"--best-metric {config.best_metric!r} is not one of {sorted(val_metrics)}"
                )
            score = val_metrics[config.best_metric]
            improved = is_better(score, best_score, config.best_metric)
            if improved:
                best_score, best_epoch = score, epoch
            seconds = time.perf_counter() - started

            epoch_metadata = metadata.model_copy(
                update={
                    "metrics": finite_metrics({**val_metrics, "epoch": float(epoch)}),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            if improved:
                best_path = save_best(out_dir / BEST_NAME, model, epoch_metadata)
            row: dict[str, Any] = {
                "epoch": epoch,
                "step": global_step,
                "train_loss": train_stats["loss"],
                "lr": train_stats["lr"],
                **{f"val_{k}": v for k, v in val_metrics.items()},
                "epoch_seconds": round(seconds, 2),
                "best": int(improved),
            }
            _append_metrics_row(metrics_path, row)
            history.append(row)
            training_state = TrainingState(
                epoch=epoch,
                global_step=global_step,
                best_score=best_score,
                best_epoch=best_epoch,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                rng=capture_rng_state(),
            )
            save_last(last_path, model, epoch_metadata, training_state)
            log(_format_summary(epoch, config.epochs, train_stats, val_metrics, seconds, improved))
    if start_epoch >= config.epochs:
        log(f"nothing to do: {resume_path} already finished epoch {start_epoch}")
    return FitResult(
        out_dir=out_dir,
        best_path=best_path,
        last_path=last_path,
        best_epoch=best_epoch,
        best_score=best_score,
        history=history,
    )
