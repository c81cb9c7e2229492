"""``python -m src.predict PATH [PATH ...]``: score images, videos and folders offline.

Exit status: 0 when every file was scored, 1 when some could not be (each one's error is in the
output), 2 for a usage error (bad arguments, no files found, a checkpoint or backend that cannot
load).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from src.core.aggregate import AGGREGATE_RULES, DEFAULT_AGGREGATE
from src.core.device import resolve_device
from src.core.errors import DeepfakeError
from src.core.settings import DEFAULT_CHECKPOINT
from src.engine.preprocess import FACE_CROP_MODES
from src.models.backends import AUTO, BACKEND_MODULES
from src.predict.files import find_media
from src.predict.output import OUTPUT_SUFFIXES, RunInfo, csv_text, json_text, table_text
from src.predict.scoring import FileResult, Predictor, load_predictor

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _output_path(value: str) -> Path:
    path = Path(value)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{value!r}: the output must end in .csv or .json")
    return path


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.predict",
        description="Score image and video files (and folders of them, recursively) with a "
        "checkpoint, offline: the service's own decoding, face crop, video sampling, face "
        "tracking, model backend and aggregation, without a server. Prints a table, or writes "
        "CSV or JSON (by the --out suffix). One file's error never stops the run; exit status "
        "0: all scored, 1: some failed, 2: usage error.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image, video or folder")
    parser.add_argument(
        "--out", type=_output_path, default=None, help="write results.csv or results.json"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="checkpoint to score with (default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=[AUTO, *BACKEND_MODULES],
        default=AUTO,
        help="auto: ONNX Runtime on a CPU when a matching export sits beside the checkpoint, "
        "else torch (default %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)"
    )
    parser.add_argument(
        "--frames",
        type=_positive,
        default=32,
        help="frames sampled uniformly over each video (default %(default)s)",
    )
    parser.add_argument(
        "--aggregate",
        choices=AGGREGATE_RULES,
        default=DEFAULT_AGGREGATE,
        help="frame scores to a video score (default %(default)s)",
    )
    parser.add_argument(
        "--face-crop",
        choices=FACE_CROP_MODES,
        default="auto",
        help="crop the face first; auto: as the checkpoint was trained (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=16, help="crops per forward pass (default 16)"
    )
    parser.add_argument(
        "--threads", type=_positive, default=None, help="model threads (default: the runtime's)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def run(args: argparse.Namespace, predictor: Predictor, files: list[Path]) -> list[FileResult]:
    results = []
    with tqdm(
        total=len(files), unit="file", file=sys.stderr, disable=args.no_progress, leave=False
    ) as bar:
        for result in predictor.predict(files):
            results.append(result)
            bar.update(1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    files = find_media(args.paths)
    if not files:
        parser.print_usage(sys.stderr)
        print(f"error: no image or video files found in {', '.join(args.paths)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        device = resolve_device(args.device)
        predictor, choice = load_predictor(
            args.checkpoint,
            backend=args.backend,
            device=device,
            threads=args.threads,
            face_crop=args.face_crop,
            frames=args.frames,
            rule=args.aggregate,
            batch_size=args.batch_size,
        )
    except (DeepfakeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"backend {choice.name} ({choice.reason})", file=sys.stderr)
    results = run(args, predictor, files)
    failed = sum(not r.ok for r in results)
    metadata = predictor.metadata
    info = RunInfo(
        checkpoint=str(args.checkpoint),
        model_version=metadata.version,
        backend=choice.name,
        threshold=metadata.threshold,
        temperature=metadata.temperature,
        face_crop=predictor.face_crop,
        frames=args.frames,
        aggregate=args.aggregate,
    )
    if args.out is None:
        sys.stdout.write(table_text(results))
    else:
        text = json_text(results, info) if args.out.suffix.lower() == ".json" else csv_text(results)
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(
        f"{len(results) - failed} of {len(results)} files scored, {failed} failed"
        + (f"; results in {args.out}" if args.out is not None else ""),
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
