"""``python -m src.export --checkpoint PATH [--format onnx] [--out PATH]``: export a checkpoint.

Prints what it wrote and the parity figure; exits 2 with a message when the checkpoint cannot be
read or the export disagrees with torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.core.errors import DeepfakeError
from src.export.onnx import PARITY_TOLERANCE, export_onnx
from src.models.backends.onnxruntime import read_export

# Export formats. A quantised export (--int8) is a later addition: a flag (or a format) whose
# exporter writes its own file and checks parity at its own tolerance.
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = export_onnx(args.checkpoint, args.out, parity_images=args.parity_images)
        info = read_export(path.read_bytes(), path)
    except DeepfakeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), an {args.format} export of "
        f"{args.checkpoint} (sha256 {info.checkpoint_sha256[:12]}...)"
    )
    print(
        f"parity with torch: max |fake_prob difference| {info.parity_max_abs_diff:.2e} over "
        f"{info.parity_crops} crops (tolerance {PARITY_TOLERANCE:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
