"""``python -m src.train``: train a real/fake frame classifier and write service checkpoints."""

from __future__ import annotations

import argparse
import logging
import sys

from src.core.errors import CheckpointError, DatasetError
from src.train.config import add_config_arguments, config_from_args
from src.train.trainer import fit

__all__ = ["build_parser", "config_from_args", "main"]

DESCRIPTION = """\
Train a timm frame classifier (labels real, fake) and write, in --out-dir:
  best.pt      weights + metadata of the best epoch by --best-metric (load it in the service)
  last.pt      the latest epoch, with optimiser/scheduler/RNG state (for --resume)
  metrics.csv  one row per epoch: train loss, learning rate, validation metrics
  epoch-NNN.pt the --keep-top best epochs (weights + metadata), if asked for

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
    """The training command line: one option per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog="python -m src.train",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = fit(config_from_args(args))
    except (DatasetError, CheckpointError, ValueError, RuntimeError) as exc:
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
