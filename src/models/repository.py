"""The model repository: ``<root>/<model>/<version>/model.pt``, each version with what was
exported beside it (``model.onnx``, ``model.int8.onnx``, ``MODEL_CARD.md``), as Triton and
TorchServe lay theirs out.

Listing reads directory entries only (no checkpoint is opened), so it is cheap enough for an
admin request. ``DFD_CHECKPOINT_PATH`` without a repository is a one-model repository: the
model ``DFD_MODEL_NAME`` with the one version that checkpoint holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from src.core.settings import CHECKPOINT_FILE, MODEL_NAME_PATTERN, version_order

_NAME = re.compile(MODEL_NAME_PATTERN)


@dataclass(frozen=True)
class VersionEntry:
    """One version on disk: its checkpoint and the files beside it (names, sorted)."""

    model: str
    version: str
    checkpoint: Path
    files: tuple[str, ...]
    size_bytes: int


@dataclass(frozen=True)
class ModelRepository:
    root: Path

    def models(self) -> dict[str, list[VersionEntry]]:
        """Every model folder holding at least one ``<version>/model.pt``, its versions
        oldest first (numbers by value: "10" after "9"). Names outside ``[A-Za-z0-9._-]``
        (hidden folders, temporary files) are skipped."""
        found: dict[str, list[VersionEntry]] = {}
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not folder.is_dir() or not _NAME.fullmatch(folder.name):
                continue
            versions = self.versions(folder.name)
            if versions:
                found[folder.name] = versions
        return found

    def versions(self, model: str) -> list[VersionEntry]:
        folder = self.root / model
        entries = [
            _entry(model, path)
            for path in folder.glob(f"*/{CHECKPOINT_FILE}")
            if path.is_file() and _NAME.fullmatch(path.parent.name)
        ]
        return sorted(entries, key=lambda entry: version_order(entry.version))


def single_checkpoint(model: str, version: str, checkpoint: Path) -> VersionEntry:
    """``DFD_CHECKPOINT_PATH`` seen as a one-model repository: ``version`` is the one the
    checkpoint's metadata gives."""
    entry = _entry(model, checkpoint)
    return VersionEntry(model, version, entry.checkpoint, entry.files, entry.size_bytes)


def _entry(model: str, checkpoint: Path) -> VersionEntry:
    beside = sorted(p for p in checkpoint.parent.iterdir() if p.is_file())
    return VersionEntry(
        model=model,
        version=checkpoint.parent.name,
        checkpoint=checkpoint,
        files=tuple(p.name for p in beside if not p.name.startswith(".")),
        size_bytes=checkpoint.stat().st_size,
    )
