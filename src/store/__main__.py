"""``python -m src.store migrate|export|purge``: the store's maintenance commands.

- ``migrate``: apply the migrations (``DFD_DATABASE_URL``); a deployment step in production.
- ``export --with-feedback --out DIR``: the recorded inputs that have ground truth, as
  ``DIR/real/*`` and ``DIR/fake/*``, the class-folder layout ``python -m src.train --data-dir
  DIR`` trains on.
- ``purge``: delete results and recordings older than ``DFD_RETENTION_DAYS`` (or ``--days``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from src.core.errors import DeepfakeError
from src.core.labels import LABELS
from src.store import migrate
from src.store.db import make_engine, redact, session_factory
from src.store.recording import Recorder
from src.store.repository import labelled_inputs, purge_before, utcnow

# What the trainer reads (src/train/dataset.py IMAGE_SUFFIXES); recorded videos are left out.
TRAINABLE_SUFFIXES = frozenset({".jpg", ".png", ".webp", ".bmp"})


@dataclass(frozen=True)
class ExportReport:
    exported: dict[str, int]
    missing: int
    not_images: int


def export_labelled(database_url: str, record_dir: Path, out: Path) -> ExportReport:
    """Copy each recorded input with feedback to ``out/<label>/<sha256><ext>``."""
    engine = make_engine(database_url)
    recorder = Recorder("off", record_dir)
    counts = dict.fromkeys(LABELS, 0)
    missing = not_images = 0
    try:
        with session_factory(engine)() as session:
            rows = list(labelled_inputs(session))
    finally:
        engine.dispose()
    for sha256, label, _media_type in rows:
        source = recorder.find(sha256)
        if source is None:
            missing += 1
            continue
        if source.suffix not in TRAINABLE_SUFFIXES:
            not_images += 1
            continue
        target = out / label / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        counts[label] = counts.get(label, 0) + 1
    return ExportReport(counts, missing, not_images)


def purge(database_url: str, record_dir: Path, days: float) -> tuple[int, int]:
    from datetime import timedelta

    engine = make_engine(database_url)
    recorder = Recorder("off", record_dir)
    try:
        with session_factory(engine).begin() as session:
            results, hashes = purge_before(session, utcnow() - timedelta(days=days))
    finally:
        engine.dispose()
    return results, sum(recorder.remove(sha256) for sha256 in hashes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.store", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url", help="default: DFD_DATABASE_URL, else sqlite:///data/store.db"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the migrations up to the newest")
    export = commands.add_parser("export", help="recorded inputs with feedback, as a data set")
    export.add_argument("--with-feedback", action="store_true", required=True)
    export.add_argument(
        "--out", type=Path, required=True, help="folder to write real/ and fake/ in"
    )
    export.add_argument("--record-dir", type=Path, help="default: DFD_RECORD_DIR")
    purge_cmd = commands.add_parser("purge", help="delete results older than the retention")
    purge_cmd.add_argument("--days", type=float, help="default: DFD_RETENTION_DAYS")
    purge_cmd.add_argument("--record-dir", type=Path, help="default: DFD_RECORD_DIR")
    return parser


def _store_settings() -> tuple[str, Path, float | None]:
    """The store's settings from the environment, without the model's (no checkpoint needed)."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class StoreSettings(BaseSettings):
        model_config = SettingsConfigDict(
            env_prefix="DFD_", env_file=".env", env_ignore_empty=True, extra="ignore"
        )
        database_url: str = "sqlite:///data/store.db"
        record_dir: Path = Path("data/recordings")
        retention_days: float | None = None

    values = StoreSettings()
    return values.database_url, values.record_dir, values.retention_days


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env_url, env_record_dir, env_days = _store_settings()
    url = args.database_url or env_url
    try:
        if args.command == "migrate":
            engine = make_engine(url)
            try:
                migrate.upgrade(engine)
                print(f"{redact(url)}: schema at {migrate.current(engine)}")
            finally:
                engine.dispose()
        elif args.command == "export":
            report = export_labelled(url, args.record_dir or env_record_dir, args.out)
            print(
                f"exported {report.exported} to {args.out} "
                f"({report.missing} recordings missing, {report.not_images} not images)"
            )
        else:
            days = args.days if args.days is not None else env_days
            if days is None:
                print("no retention: set DFD_RETENTION_DAYS or pass --days", file=sys.stderr)
                return 2
            results, recordings = purge(url, args.record_dir or env_record_dir, days)
            print(f"purged {results} results and {recordings} recordings older than {days} days")
    except DeepfakeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unreachable database, a bad URL: one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
