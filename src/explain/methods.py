"""Where in the face crop the model found "fake": the model-agnostic methods, with no torch.

Every method takes the uint8 SxSx3 crop the model scores (``transforms.build_crop``'s output,
after the face crop) and returns a non-negative heat map normalised to [0, 1], where high means
"this region pushed the fake probability up". This module is NumPy and OpenCV only, so LIME and
SHAP explain whatever runtime serves the model (ONNX Runtime in the torch-free image, or torch)
through a :data:`ScoreFn` and need no gradients:

* ``lime``: LIME (Ribeiro et al., 2016) as the reference ``lime_image`` does it: random on/off
  masks over the regions (the first one all on), an exponential kernel of the cosine distance
  to the all-on mask (width 0.25), and a ridge regression (alpha 1, with intercept) weighted by
  it; each region's coefficient is its heat.
* ``shap``: Kernel SHAP (Lundberg and Lee, 2017): coalitions drawn from the Shapley kernel
  (size k with probability proportional to (M-1)/(k(M-k)), then a uniform subset, each with its
  complement), fitted by least squares under the exact efficiency constraint (the values sum to
  f(all on) - f(all off)), as ``shap.KernelExplainer`` solves it; each region's value is its heat.

Both fit the fake *log-odds* (:func:`log_odds`) of crops whose "off" regions are replaced by a
blurred copy of the crop (:func:`blurred_baseline`). The regions are :func:`superpixels`.

Why not the ``lime`` or ``shap`` packages themselves: with their dependencies they add 338 MB
(lime: SciPy, scikit-learn, scikit-image, matplotlib) and 503 MB (shap: SciPy, scikit-learn,
pandas, numba, llvmlite) to the 589 MB serving set, and even scikit-learn alone (for its linear
models) adds 202 MB, past the torch-free image's 800 MB target. What is written here is only the
sampling and the kernel of each paper; the fits are NumPy's least-squares solvers, and the tests
check them against scikit-learn's ``Ridge`` and against exact Shapley values.

The gradient methods (Grad-CAM, Integrated Gradients) need the torch network and Captum: they
live in :mod:`src.explain.gradients`, which imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import cv2
import numpy as np

from src.explain.kinds import GRADIENT_METHODS, ExplainConfig, Method

if TYPE_CHECKING:  # imports torch
    from src.explain.gradients import GradientExplainer

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""uint8 (N, S, S, 3) crops -> float (N,) fake probabilities."""

LIME_KERNEL_WIDTH = 0.25  # lime_image's default
LIME_RIDGE_ALPHA = 1.0  # lime's default regressor: Ridge(alpha=1, fit_intercept=True)


def blurred_baseline(crop: np.ndarray) -> np.ndarray:
    """The crop with its fine detail removed: what "deleted" pixels become, for IG, LIME, SHAP
    and the deletion metric. Blur rather than grey, so a deletion adds no new edges that a
    blend detector could read as a seam."""
    sigma = max(1.0, crop.shape[0] / 16)
    return cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma)


def superpixels(crop: np.ndarray, count: int) -> np.ndarray:
    """The regions LIME and SHAP switch on and off: a regular grid of about ``count`` square
    cells (:func:`grid_cells`), as an int (S, S) map labelled 0..K-1.

    A grid rather than SLIC superpixels (scikit-image, which needs SciPy: 200 MB the torch-free
    image has no room for), and chosen by the deletion metric too: on the demo fakes
    (``python -m src.train.evaluate --explain --explain-regions grid`` against ``slic``),
    deleting the hottest fifth of the grid's maps lowered the fake probability more than of
    SLIC's, for both methods on both splits (mean after deletion, test/val: LIME 0.524/0.431
    against 0.558/0.453, SHAP 0.577/0.473 against 0.616/0.543; random 0.600/0.547). A
    blending seam, the evidence here, runs across the edges SLIC follows."""
    return grid_cells(crop.shape[0], count)


def grid_cells(side: int, count: int) -> np.ndarray:
    """A ``side`` x ``side`` map of about ``count`` square cells, labelled row by row."""
    cells = max(2, round(count**0.5))
    index = (np.arange(side) * cells) // side
    return (index[:, None] * cells + index[None, :]).astype(np.int64)


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    """The fake probability as log-odds (float64): what LIME and SHAP fit, as the gradient
    methods read the network's log-odds. A linear surrogate fits a saturated probability badly
    (0.99 and 0.9999 look alike)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    result: np.ndarray = np.log(p / (1 - p))
    return result


def normalise(heat: np.ndarray) -> np.ndarray:
    """Keep the evidence for "fake" (positive values) and scale it to [0, 1] (all zeros when the
    method found none)."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    heat = np.clip(heat, 0.0, None)
    peak = float(heat.max()) if heat.size else 0.0
    return heat / peak if peak > 0 else np.zeros_like(heat)


def smooth(heat: np.ndarray, sigma: float) -> np.ndarray:
    """Signed per-pixel attributions summed over neighbourhoods before the sign is cut: IG's
    raw map alternates sign from pixel to pixel, and what a person (and the deletion metric)
    needs is which regions add up to evidence."""
    return cv2.GaussianBlur(heat.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)


# ---------------------------------------------------------------------- scoring masks
def masked_crops(
    crop: np.ndarray, baseline: np.ndarray, segments: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """uint8 (N, S, S, 3): the crop where a mask's region is on, the baseline where it is off."""
    on = masks.astype(bool)[:, segments][..., None]  # (N, S, S, 1)
    return np.where(on, crop[None], baseline[None])


def score_masks(
    crop: np.ndarray,
    segments: np.ndarray,
    masks: np.ndarray,
    score: ScoreFn,
    batch: int,
) -> np.ndarray:
    """The fake log-odds of each mask's crop, scored ``batch`` crops per call (so the caller
    can interleave other work and stop between calls)."""
    baseline = blurred_baseline(crop)
    values = [
        log_odds(score(masked_crops(crop, baseline, segments, chunk)))
        for chunk in _chunks(masks, max(1, batch))
    ]
    return np.concatenate(values) if values else np.zeros(0)


def _chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


# ---------------------------------------------------------------------- LIME
def lime_masks(features: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` rows of on/off regions: the first all on (the crop itself), the others each
    region on with probability 1/2 (``lime_image.data_labels``)."""
    masks = rng.integers(0, 2, size=(max(1, samples), features)).astype(bool)
    masks[0] = True
    return masks


def lime_kernel(masks: np.ndarray, width: float = LIME_KERNEL_WIDTH) -> np.ndarray:
    """LIME's sample weights: ``sqrt(exp(-d^2 / width^2))`` of the cosine distance ``d`` from
    each mask to the all-on one (``1 - sqrt(on / features)``; 1 for an all-off mask)."""
    on = masks.sum(axis=1).astype(np.float64)
    distance = 1.0 - np.sqrt(on / masks.shape[1])
    weights: np.ndarray = np.sqrt(np.exp(-(distance**2) / width**2))
    return weights


def weighted_ridge(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float
) -> tuple[np.ndarray, float]:
    """Coefficients and intercept minimising ``sum(w * (y - x @ coef - b)^2) + alpha *
    |coef|^2`` (scikit-learn's ``Ridge(alpha).fit(x, y, sample_weight=w)``): centre on the
    weighted means, then least squares on the rows scaled by ``sqrt(w)`` stacked over
    ``sqrt(alpha) * I``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    x_mean = (w[:, None] * x).sum(axis=0) / total
    y_mean = float((w * y).sum() / total)
    root = np.sqrt(w)[:, None]
    features = x.shape[1]
    design = np.vstack([(x - x_mean) * root, np.sqrt(alpha) * np.eye(features)])
    target = np.concatenate([(y - y_mean) * root[:, 0], np.zeros(features)])
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    return coef, y_mean - float(x_mean @ coef)


def lime_values(masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each region's LIME coefficient for these masks and their log-odds."""
    coef, _ = weighted_ridge(masks, targets, lime_kernel(masks), LIME_RIDGE_ALPHA)
    return coef


# ---------------------------------------------------------------------- Kernel SHAP
def shap_masks(features: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """All off, all on, then coalitions from the Shapley kernel: a size ``k`` in 1..M-1 with
    probability proportional to ``(M-1) / (k (M-k))``, a uniform subset of that size, and its
    complement after it (paired sampling); ``samples`` rows in all (at least 4)."""
    if features < 2:
        raise ValueError("Kernel SHAP needs at least two regions")
    rows = max(4, samples)
    pairs = (rows - 2 + 1) // 2
    sizes = np.arange(1, features)
    kernel = (features - 1) / (sizes * (features - sizes))
    drawn = rng.choice(sizes, size=pairs, p=kernel / kernel.sum())
    ranks = np.argsort(rng.random((pairs, features)), axis=1)
    coalitions = ranks < drawn[:, None]
    paired = np.empty((2 * pairs, features), dtype=bool)
    paired[0::2] = coalitions
    paired[1::2] = ~coalitions
    ends = np.array([np.zeros(features, dtype=bool), np.ones(features, dtype=bool)])
    return np.vstack([ends, paired])[:rows]


def shap_values(masks: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Kernel SHAP values from :func:`shap_masks`'s rows and their log-odds.

    Rows 0 and 1 are all off and all on: the values must sum to ``f(on) - f(off)`` exactly, so
    the last value is eliminated (``shap.KernelExplainer.solve``) and the others fitted by
    ordinary least squares: the coalitions were drawn from the kernel, so each weighs the same.
    """
    off, on = float(targets[0]), float(targets[1])
    z = masks[2:].astype(np.float64)
    y = targets[2:] - off
    total = on - off
    if len(z) == 0:
        return np.full(masks.shape[1], total / masks.shape[1])
    design = z[:, :-1] - z[:, -1:]
    rest = np.linalg.lstsq(design, y - z[:, -1] * total, rcond=None)[0]
    result: np.ndarray = np.append(rest, total - rest.sum())
    return result


# ---------------------------------------------------------------------- entry points
def perturbation_heat(
    method: Method,
    crop: np.ndarray,
    score: ScoreFn,
    config: ExplainConfig,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """LIME or Kernel SHAP values of each region for the fake log-odds, painted back onto its
    pixels. ``score`` is called with batches of at most ``config.perturbations_per_call``
    crops; ``segments`` defaults to :func:`superpixels`."""
    if segments is None:
        segments = superpixels(crop, config.superpixels)
    features = int(segments.max()) + 1
    rng = np.random.default_rng(config.seed)
    if method == "lime":
        masks = lime_masks(features, config.lime_samples, rng)
        solve = lime_values
    elif method == "shap":
        masks = shap_masks(features, config.shap_samples, rng)
        solve = shap_values
    else:
        raise ValueError(f"{method} is not a perturbation method")
    targets = score_masks(crop, segments, masks, score, config.perturbations_per_call)
    values = solve(masks, targets)
    return normalise(values[segments])


def explain_crop(
    method: Method,
    crop: np.ndarray,
    config: ExplainConfig,
    *,
    gradients: GradientExplainer | None = None,
    score: ScoreFn | None = None,
) -> np.ndarray:
    """The heat map of ``method`` for one crop, from whichever of ``gradients``/``score`` it
    needs (offline use: evaluation, the benchmark; the service schedules the two itself)."""
    if method in GRADIENT_METHODS:
        if gradients is None:
            raise ValueError(f"{method} needs the torch network")
        return gradients.explain(method, crop, config)
    if score is None:
        raise ValueError(f"{method} needs a scoring function")
    return perturbation_heat(method, crop, score, config)
