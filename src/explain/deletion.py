"""The deletion metric: is the heat where the evidence is?

Replace the ``fraction`` of the crop's pixels with the most heat by the blurred baseline and
score again; do the same with a random ``fraction``. A faithful map lowers the fake probability
more than a random deletion does (Petsiuk et al., 2018, "RISE": the deletion game, at one point
of its curve). The random pixels are the hottest of a random smooth map (uniform noise on a
``RANDOM_CELLS`` grid, upsampled), so both deletions remove blobs of the same kind and the
comparison is about where, not about how scattered: scattered single pixels make a salt-and-
pepper texture that a blend detector reads as an artefact of its own. Ties in the heat
(Grad-CAM's coarse grid, upsampled) are broken at random, so the count deleted is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.explain.methods import ScoreFn, blurred_baseline
from src.explain.render import upsample

RANDOM_CELLS = 8


@dataclass(frozen=True)
class Deletion:
    """Fake probabilities of one crop: as it is, without its hottest pixels, without random ones
    (the mean over several draws)."""

    original: float
    heat_deleted: float
    random_deleted: float

    @property
    def heat_drop(self) -> float:
        return self.original - self.heat_deleted

    @property
    def random_drop(self) -> float:
        return self.original - self.random_deleted


def delete_pixels(crop: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The crop with the ``chosen`` (boolean S x S) pixels replaced by the blurred baseline."""
    out = crop.copy()
    out[chosen] = blurred_baseline(crop)[chosen]
    return out


def top_pixels(heat: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of exactly ``round(fraction * pixels)`` pixels with the most heat."""
    flat = heat.ravel()
    count = round(fraction * flat.size)
    order = np.lexsort((rng.random(flat.size), -flat))  # heat descending, ties at random
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[order[:count]] = True
    return chosen.reshape(heat.shape)


def random_pixels(side: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The hottest ``fraction`` of a random smooth map: random blobs."""
    noise = upsample(rng.random((RANDOM_CELLS, RANDOM_CELLS)).astype(np.float32), side)
    return top_pixels(noise, fraction, rng)


def deletion(
    crop: np.ndarray,
    heat: np.ndarray,
    score: ScoreFn,
    *,
    fraction: float = 0.2,
    random_draws: int = 5,
    seed: int = 0,
) -> Deletion:
    """Score the crop, the crop without its hottest ``fraction`` and without random ones."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    side = crop.shape[0]
    pixel_heat = upsample(heat, side)
    masks = [top_pixels(pixel_heat, fraction, rng)]
    masks += [random_pixels(side, fraction, rng) for _ in range(random_draws)]
    batch = np.stack([crop, *(delete_pixels(crop, m) for m in masks)])
    probs = np.asarray(score(batch), dtype=np.float64)
    return Deletion(
        original=float(probs[0]),
        heat_deleted=float(probs[1]),
        random_deleted=float(probs[2:].mean()),
    )
