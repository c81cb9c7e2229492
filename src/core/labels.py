"""The class labels, defined once: their order in every model, and how a probability becomes one.

Training writes ``LABELS`` into each checkpoint's metadata, and every consumer reads the fake
column through :func:`fake_column`, so a checkpoint with another label order still reads right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

REAL: Literal["real"] = "real"
FAKE: Literal["fake"] = "fake"
LABELS: tuple[str, str] = (REAL, FAKE)
"""Class index order of the models this project trains: 0 real, 1 fake."""

Label = Literal["real", "fake"]
Array = TypeVar("Array")


def fake_index(labels: Sequence[str] = LABELS) -> int:
    """The column of ``labels`` that holds the fake probability."""
    try:
        return list(labels).index(FAKE)
    except ValueError:
        raise ValueError(f"labels {list(labels)} have no {FAKE!r} class") from None


def fake_column(probabilities: Array, labels: Sequence[str] = LABELS) -> Array:
    """The fake-probability column of an (N, num_labels) NumPy array or tensor."""
    return probabilities[:, fake_index(labels)]  # type: ignore[index]


def decide(fake_prob: float, threshold: float) -> Label:
    """``fake`` when ``fake_prob >= threshold``, else ``real``: the one decision rule."""
    return FAKE if fake_prob >= threshold else REAL
