"""Keeping uploaded bytes for audit and retraining (``DFD_RECORD_INPUTS=off|all|sample:F``).

Content-addressed: ``<DFD_RECORD_DIR>/<first two hex>/<sha256><ext>``, so the same bytes sent a
thousand times are kept once, and the store's ``sha256`` column finds them. Written atomically
(temporary file, then rename) off the event loop.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)
_SAMPLE = re.compile(r"sample:(?P<fraction>0?\.\d+|1(\.0*)?|0)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_mode(text: str) -> float:
    """The fraction of inputs to keep: ``off`` 0, ``all`` 1, ``sample:0.05`` 0.05."""
    text = text.strip().lower()
    if text == "off":
        return 0.0
    if text == "all":
        return 1.0
    match = _SAMPLE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected off, all or sample:FRACTION (0..1), not {text!r}")
    return float(match["fraction"])


def extension_for(data: bytes) -> str:
    """The file extension from the bytes themselves (never from what the client claimed)."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head.startswith(b"BM"):
        return ".bmp"
    if head[4:8] == b"ftyp":
        return ".mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return ".webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    return ".bin"


MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".bin": "application/octet-stream",
}


def media_type_for(data: bytes) -> str:
    return MEDIA_TYPES[extension_for(data)]


class Recorder:
    def __init__(
        self, mode: str, directory: Path, chance: Callable[[], float] = random.random
    ) -> None:
        self.fraction = parse_mode(mode)
        self.directory = directory
        self._chance = chance

    @property
    def enabled(self) -> bool:
        return self.fraction > 0

    def wants(self) -> bool:
        """Whether to keep this input (always for ``all``, by chance for ``sample:F``)."""
        return self.fraction >= 1.0 or (self.fraction > 0 and self._chance() < self.fraction)

    def path_for(self, sha256: str, extension: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}{extension}"

    def keep(self, data: bytes, sha256: str) -> Path:
        """Write ``data`` under its hash unless already there."""
        path = self.path_for(sha256, extension_for(data))
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def find(self, sha256: str) -> Path | None:
        if not _SHA256.fullmatch(sha256):
            return None
        folder = self.directory / sha256[:2]
        matches = sorted(folder.glob(f"{sha256}.*")) if folder.is_dir() else []
        return matches[0] if matches else None

    def remove(self, sha256: str) -> bool:
        path = self.find(sha256)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True
