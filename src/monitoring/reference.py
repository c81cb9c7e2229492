"""Reference statistics: what the validation data looked like, stored in the checkpoint.

Each monitored value (``features.MONITORED``) keeps its bin edges (the validation deciles, so
every bin starts with about a tenth of the data), the share of the validation data in each bin
(what the population stability index compares against) and its percentiles (a step CDF for the
Kolmogorov-Smirnov statistic). They live under ``metadata["reference"]`` in the checkpoint
(``ModelMetadata`` keeps extra keys), so the statistics travel with the weights they describe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from src.core.errors import CheckpointError
from src.models.checkpoint import ModelMetadata
from src.monitoring.features import FAKE_PROB

REFERENCE_KEY = "reference"
REFERENCE_FORMAT: Final = "dfd-reference/1"
DECILES = np.linspace(0.1, 0.9, 9)
PERCENTILES = np.linspace(0.0, 1.0, 101)
# A value that this share of the reference sits on exactly (an image size, a lossless format)
# gets a bin of its own, so larger and smaller values both land outside it.
POINT_MASS = 0.1
MIN_REFERENCE_SAMPLES = 20


class FeatureReference(BaseModel):
    """One value's reference distribution: bins ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1)
    mean: float
    std: float
    edges: list[float]
    proportions: list[float]
    percentiles: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureReference:
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError("proportions need one more entry than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase")
        if any(b < a for a, b in zip(self.percentiles, self.percentiles[1:], strict=False)):
            raise ValueError("percentiles must not decrease")
        return self


class ReferenceStats(BaseModel):
    """The validation distribution of every monitored value, for one checkpoint."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["dfd-reference/1"] = REFERENCE_FORMAT
    split: str
    data: str | None = None
    n: int = Field(ge=1)
    created_at: str
    # The checkpoint's temperature when fake_prob was measured: a later calibration rescales the
    # fake_prob reference instead of making it stale (see for_temperature).
    temperature: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    features: dict[str, FeatureReference]

    def for_temperature(self, temperature: float, labels: int) -> ReferenceStats:
        """The reference as a model calibrated to ``temperature`` would have produced it.

        With two labels ``fake_prob = sigmoid((z_fake - z_real) / T)``, so a new temperature maps
        every fake_prob by ``sigmoid(logit(p) * T_old / T_new)``: monotone, so each bin keeps its
        share and only the edges and percentiles move. With more labels there is no such map and
        the fake_prob reference is dropped (re-measure with ``python -m src.train.reference``).
        """
        if temperature == self.temperature or FAKE_PROB not in self.features:
            return self
        features = dict(self.features)
        rescaled = (
            _rescaled(features[FAKE_PROB], self.temperature / temperature) if labels == 2 else None
        )
        if rescaled is None:
            del features[FAKE_PROB]
        else:
            features[FAKE_PROB] = rescaled
        return self.model_copy(update={"temperature": temperature, "features": features})


def _rescaled(feature: FeatureReference, ratio: float) -> FeatureReference | None:
    def remap(values: list[float]) -> np.ndarray:
        p = np.clip(np.asarray(values, dtype=np.float64), 1e-12, 1 - 1e-12)
        return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) * ratio))

    edges, percentiles = remap(feature.edges), remap(feature.percentiles)
    if np.any(np.diff(edges) <= 0):  # bins squeezed together at 0 or 1: cannot keep them apart
        return None
    return FeatureReference(
        n=feature.n,
        mean=float(percentiles.mean()),  # from the percentiles: the values themselves are gone
        std=float(percentiles.std()),
        edges=edges.tolist(),
        proportions=feature.proportions,
        percentiles=percentiles.tolist(),
    )


def bin_edges(values: np.ndarray) -> np.ndarray:
    """The deciles of ``values``, deduplicated; a value holding at least ``POINT_MASS`` of
    the data gets an edge just above it too, so it forms a bin of its own."""
    # "nearest": edges are values of the data, so a repeated value is never split by a hair.
    edges = set(np.quantile(values, DECILES, method="nearest").tolist())
    unique, counts = np.unique(values, return_counts=True)
    for value in unique[counts >= POINT_MASS * len(values)]:
        edges.update((float(value), float(np.nextafter(value, np.inf))))
    return np.array(sorted(edges), dtype=np.float64)


def proportions(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(1, len(values))


def describe_feature(values: Sequence[float] | np.ndarray) -> FeatureReference:
    array = np.asarray(values, dtype=np.float64)
    edges = bin_edges(array)
    return FeatureReference(
        n=len(array),
        mean=float(array.mean()),
        std=float(array.std()),
        edges=edges.tolist(),
        proportions=proportions(array, edges).tolist(),
        percentiles=np.quantile(array, PERCENTILES).tolist(),
    )


def build_reference(
    samples: Mapping[str, Sequence[float]],
    *,
    split: str,
    n: int,
    data: str | None = None,
    temperature: float = 1.0,
) -> ReferenceStats:
    """Reference statistics from each value's samples (values with too few are left out:
    their drift would be noise). ``n``: images measured."""
    features = {
        name: describe_feature(values)
        for name, values in samples.items()
        if len(values) >= MIN_REFERENCE_SAMPLES
    }
    return ReferenceStats(
        split=split,
        data=data,
        n=n,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        temperature=temperature,
        features=features,
    )


def reference_of(metadata: ModelMetadata) -> ReferenceStats | None:
    """The checkpoint's reference statistics, for its current temperature; None when it has
    none (trained before them)."""
    raw: Any = (metadata.model_extra or {}).get(REFERENCE_KEY)
    if raw is None:
        return None
    try:
        stored = ReferenceStats.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(f"invalid reference statistics in the checkpoint: {exc}") from exc
    return stored.for_temperature(metadata.temperature, len(metadata.labels))


def with_reference(metadata: ModelMetadata, reference: ReferenceStats) -> ModelMetadata:
    """``metadata`` with ``reference`` stored (replacing any earlier one); nothing else changes."""
    dumped = metadata.model_dump(mode="json")
    dumped[REFERENCE_KEY] = reference.model_dump(mode="json")
    return ModelMetadata.model_validate(dumped)
