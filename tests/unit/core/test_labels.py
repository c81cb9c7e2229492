"""Labels, their order and the decision rule, defined once."""

from __future__ import annotations

import numpy as np
import pytest

from src.core.labels import LABELS, decide, fake_column, fake_index


def test_the_fake_column_is_found_by_name() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert LABELS == ("real", "fake")
    assert fake_column(probabilities).tolist() == [0.1, 0.8]
    assert fake_column(probabilities, ["fake", "real"]).tolist() == [0.9, 0.2]
    with pytest.raises(ValueError, match="no 'fake' class"):
        fake_index(["cat", "dog"])


def test_the_threshold_itself_counts_as_fake() -> None:
    assert decide(0.5, 0.5) == "fake"
    assert decide(0.4999, 0.5) == "real"
