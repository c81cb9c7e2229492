"""A checkpoint is data, never code: a real ``torch.save``d checkpoint carrying an object whose
unpickling would run code is refused by every loader, and the code does not run.

(A plain ``pickle.dumps`` file is refused as "not a zip" before unpickling even starts, so it
would not notice ``weights_only=False``; this file is a valid torch zip archive.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from src.core.errors import CheckpointError
from src.models.backends import torch as torch_backend
from src.models.checkpoint import read_checkpoint
from src.train.checkpoint import load_resume_point
from src.train.pretrained import load_weights_file
from tests.helpers.checkpoints import TINY_ARCH, make_checkpoint


class RunsCode:
    """Unpickling this calls ``os.makedirs(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def booby_trapped_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A valid dfd-checkpoint/1 (format, metadata, weights) plus the object, as training state."""
    marker = tmp_path / "code-ran"
    honest = make_checkpoint(tmp_path / "honest.pt")
    payload = torch.load(honest, map_location="cpu", weights_only=True)
    payload["training"] = {"epoch": 1, "hook": RunsCode(marker)}
    trapped = tmp_path / "trapped.pt"
    torch.save(payload, trapped)
    assert not marker.exists()
    return trapped, marker


def _build_and_load_weights(path: Path) -> object:
    from src.models.network import build_model

    return load_weights_file(build_model(TINY_ARCH, num_classes=2), path)


LOADERS: dict[str, Callable[[Path], object]] = {
    "read_checkpoint (service and training)": read_checkpoint,
    "torch backend (serving)": lambda path: torch_backend.load(path, "cpu"),
    "resume (training)": load_resume_point,
    "pretrained weights file (training)": _build_and_load_weights,
}


def test_the_trap_would_spring_if_the_file_were_unpickled_in_full(tmp_path: Path) -> None:
    """Guard for the test itself: the file really runs code under ``weights_only=False``."""
    trapped, marker = booby_trapped_checkpoint(tmp_path)
    torch.load(trapped, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("loader", LOADERS.values(), ids=list(LOADERS))
def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: Path, loader: Callable[[Path], object]
) -> None:
    trapped, marker = booby_trapped_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="cannot read"):
        loader(trapped)
    assert not marker.exists(), "unpickling the checkpoint ran code"


def test_the_same_checkpoint_without_the_object_loads(tmp_path: Path) -> None:
    honest = make_checkpoint(tmp_path / "honest.pt")
    assert read_checkpoint(honest).metadata.architecture == TINY_ARCH
