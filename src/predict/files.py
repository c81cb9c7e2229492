"""Which files a ``python -m src.predict`` run scores: the paths named, folders searched
recursively for image and video files, each file once, in a stable order."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"})
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


def find_media(paths: Iterable[str | Path]) -> list[Path]:
    """The files to score, in order: a file named is taken whatever its name (its bytes decide
    what it is); a folder gives its image and video files (by suffix, any case), recursively,
    sorted, hidden files and folders skipped. A path that does not exist is kept, so that it is
    reported as that file's error rather than silently dropped. Duplicates are removed."""
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in map(Path, paths):
        candidates = _folder_media(entry) if entry.is_dir() else [entry]
        for path in candidates:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def _folder_media(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in MEDIA_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
