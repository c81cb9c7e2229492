"""``python -m src.export --checkpoint PATH [--format onnx] [--out PATH] [--int8 --calibration-dir
DIR]``: export a checkpoint.

Prints what it wrote and the parity figure; exits 2 with a message when the checkpoint cannot be
read or the export disagrees with torch. ``--int8`` then quantises the export
(``src/export/quantize.py``) into ``model.int8.onnx`` and prints fp32 and int8 ROC AUC per
evaluation split; it exits 2 when the int8 file is not offered (AUC drop over the gate).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.core.errors import DeepfakeError
from src.export.onnx import PARITY_TOLERANCE, export_onnx
from src.models.backends.onnxruntime import read_export

FORMATS = ("onnx",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.export",
        description="Export a dfd-checkpoint/1 checkpoint for another runtime. The export is "
        f"refused (nothing written) when its fake_prob differs from torch's by more than "
        f"{PARITY_TOLERANCE:g} on examples/*.jpg, random crops and any --parity-images.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint (.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write (default: beside the checkpoint, model.pt -> model.onnx, which is "
        "where DFD_BACKEND=auto|onnxruntime looks)",
    )
    parser.add_argument(
        "--parity-images",
        type=Path,
        nargs="+",
        default=[],
        metavar="PATH",
        help="image files or folders (e.g. data/demo/test) also scored in the parity check",
    )
    int8 = parser.add_argument_group(
        "int8", "static quantisation of the ONNX export (QDQ, per-channel), gated on ROC AUC"
    )
    int8.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx beside the checkpoint (DFD_ONNX_PRECISION=int8 serves "
        "it); offered only when its ROC AUC drops by at most 0.01 on every evaluation split",
    )
    int8.add_argument(
        "--calibration-dir",
        type=Path,
        metavar="DIR",
        help="images to calibrate on, e.g. data/demo/val (face crops for a face_crop model)",
    )
    int8.add_argument(
        "--eval-data",
        type=Path,
        metavar="DIR",
        help="labelled data with the evaluation splits (default: the calibration dir's parent)",
    )
    int8.add_argument(
        "--eval-splits",
        nargs="+",
        default=["test", "test_xmanip"],
        metavar="SPLIT",
        help="splits whose ROC AUC gates the int8 file (default: test test_xmanip)",
    )
    int8.add_argument(
        "--calibrate-method",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="ONNX Runtime calibration method (default: minmax)",
    )
    args = parser.parse_args(argv)
    if args.int8 and args.calibration_dir is None:
        parser.error("--int8 needs --calibration-dir DIR")
    if args.int8 and args.out is not None:
        parser.error("--int8 quantises the export beside the checkpoint: drop --out")
    return args


def _error(exc: DeepfakeError | OSError) -> int:
    print(f"error: {exc.message if isinstance(exc, DeepfakeError) else exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = export_onnx(args.checkpoint, args.out, parity_images=args.parity_images)
        info = read_export(path.read_bytes(), path)
    except (DeepfakeError, OSError) as exc:
        return _error(exc)
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), an {args.format} export of "
        f"{args.checkpoint} (sha256 {info.checkpoint_sha256[:12]}...)"
    )
    print(
        f"parity with torch: max |fake_prob difference| {info.parity_max_abs_diff:.2e} over "
        f"{info.parity_crops} crops (tolerance {PARITY_TOLERANCE:g})"
    )
    return quantize(args) if args.int8 else 0


def quantize(args: argparse.Namespace) -> int:
    from src.export.quantize import quantize_int8  # onnxruntime.quantization, only when asked

    try:
        result = quantize_int8(
            args.checkpoint,
            args.calibration_dir,
            eval_data=args.eval_data,
            eval_splits=args.eval_splits,
            calibrate_method=args.calibrate_method,
        )
    except (DeepfakeError, OSError) as exc:
        return _error(exc)
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB), int8 QDQ per-channel, "
        f"calibrated ({result.calibrate_method}) on {result.calibration_images} images"
    )
    for split in result.splits:
        print(
            f"  {split.split}: ROC AUC fp32 {split.auc_fp32:.4f} int8 {split.auc_int8:.4f} "
            f"(drop {split.drop:+.4f}; n {split.n}; max |fake_prob diff| {split.max_abs_diff:.3f})"
        )
    if not result.offered:
        print(
            f"error: int8 NOT offered: the ROC AUC drop exceeds {result.max_auc_drop:g} on a "
            "split; the file is marked so and DFD_ONNX_PRECISION=int8 refuses it",
            file=sys.stderr,
        )
        return 2
    print(f"int8 offered (AUC drop <= {result.max_auc_drop:g} on every split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
