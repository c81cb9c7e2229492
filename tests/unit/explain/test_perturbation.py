"""LIME and Kernel SHAP without torch (``src/explain/methods.py``): each against the reference it
follows (scikit-learn's ridge and cosine distances, which ``lime_image`` uses; exact Shapley
values), their sampling, their batching, a NumPy model whose evidence is known, and a module
that imports no torch."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from src.explain.deletion import deletion
from src.explain.kinds import ExplainConfig, Method
from src.explain.methods import (
    LIME_KERNEL_WIDTH,
    LIME_RIDGE_ALPHA,
    blurred_baseline,
    grid_cells,
    lime_kernel,
    lime_masks,
    lime_values,
    masked_crops,
    perturbation_heat,
    shap_masks,
    shap_values,
    superpixels,
    weighted_ridge,
)
from tests.helpers import REPO_ROOT

SIDE = 64


def exact_shapley(value: Callable[[np.ndarray], float], features: int) -> np.ndarray:
    """Shapley values by their definition: every coalition, weighted |S|! (M-|S|-1)! / M!."""
    phi = np.zeros(features)
    for i in range(features):
        others = [j for j in range(features) if j != i]
        for size in range(features):
            weight = math.factorial(size) * math.factorial(features - size - 1)
            weight /= math.factorial(features)
            for subset in itertools.combinations(others, size):
                z = np.zeros(features, dtype=bool)
                z[list(subset)] = True
                with_i = z.copy()
                with_i[i] = True
                phi[i] += weight * (value(with_i) - value(z))
    return phi


def test_the_ridge_fit_is_scikit_learns_weighted_ridge() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, size=(120, 30)).astype(float)
    y = x @ rng.normal(size=30) + rng.normal(scale=0.3, size=120) + 2.0
    w = rng.random(120)
    coef, intercept = weighted_ridge(x, y, w, alpha=LIME_RIDGE_ALPHA)
    reference = Ridge(alpha=LIME_RIDGE_ALPHA, fit_intercept=True).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(coef, reference.coef_, atol=1e-8)
    assert intercept == pytest.approx(float(reference.intercept_), abs=1e-8)


def test_the_lime_kernel_is_lime_images_on_cosine_distances() -> None:
    """``lime_image``: ``pairwise_distances(data, data[0], metric='cosine')`` then
    ``sqrt(exp(-d^2 / width^2))``; an all-off row is at distance 1."""
    masks = lime_masks(40, 300, np.random.default_rng(1))
    masks[5] = False
    assert masks[0].all(), "the first sample is the crop itself"
    distances = pairwise_distances(masks.astype(float), np.ones((1, 40)), metric="cosine").ravel()
    expected = np.sqrt(np.exp(-(distances**2) / LIME_KERNEL_WIDTH**2))
    np.testing.assert_allclose(lime_kernel(masks), expected, atol=1e-12)
    assert 0.4 < masks[1:].mean() < 0.6


def test_lime_recovers_a_linear_model() -> None:
    masks = lime_masks(12, 400, np.random.default_rng(2))
    truth = np.linspace(-1.0, 2.0, 12)
    values = lime_values(masks, masks @ truth + 0.5)
    np.testing.assert_allclose(values, truth, atol=0.05)  # ridge shrinks a little


def test_shap_masks_are_paired_draws_from_the_shapley_kernel() -> None:
    features = 10
    masks = shap_masks(features, 20002, np.random.default_rng(0))
    assert masks.shape == (20002, features)
    assert not masks[0].any() and masks[1].all()
    np.testing.assert_array_equal(masks[2::2], ~masks[3::2])
    sizes = masks[2::2].sum(axis=1)
    k = np.arange(1, features)
    kernel = (features - 1) / (k * (features - k))
    share = np.bincount(sizes, minlength=features)[1:] / len(sizes)
    np.testing.assert_allclose(share, kernel / kernel.sum(), atol=0.02)
    assert len(shap_masks(features, 7, np.random.default_rng(0))) == 7


def test_kernel_shap_is_exact_on_a_linear_model_and_sums_to_the_difference() -> None:
    features = 20
    truth = np.random.default_rng(5).normal(size=features)
    masks = shap_masks(features, 60, np.random.default_rng(4))
    values = shap_values(masks, masks @ truth - 3.0)
    np.testing.assert_allclose(values, truth, atol=1e-9)


def test_kernel_shap_approaches_the_exact_shapley_values_of_an_interaction() -> None:
    features = 6

    def value(z: np.ndarray) -> float:
        return float(3.0 * z[0] * z[1] + 2.0 * z[2] - z[3] * z[4] * z[5])

    exact = exact_shapley(value, features)
    assert exact[:3] == pytest.approx([1.5, 1.5, 2.0])
    masks = shap_masks(features, 3000, np.random.default_rng(6))
    targets = np.array([value(row) for row in masks])
    values = shap_values(masks, targets)
    assert values.sum() == pytest.approx(value(np.ones(features)) - value(np.zeros(features)))
    np.testing.assert_allclose(values, exact, atol=0.05)


def test_a_masked_crop_keeps_the_on_regions_and_blurs_the_off_ones() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    baseline = blurred_baseline(crop)
    segments = grid_cells(SIDE, 4)
    masks = np.array([[True, False, True, False], [False] * 4])
    out = masked_crops(crop, baseline, segments, masks)
    assert out.shape == (2, SIDE, SIDE, 3) and out.dtype == np.uint8
    on = np.isin(segments, [0, 2])
    np.testing.assert_array_equal(out[0][on], crop[on])
    np.testing.assert_array_equal(out[0][~on], baseline[~on])
    np.testing.assert_array_equal(out[1], baseline)


def top_left_energy_score(crops: np.ndarray) -> np.ndarray:
    """A NumPy "model": fake probability rises with the texture (squared differences between
    neighbours) of the top-left quadrant only."""
    half = SIDE // 2
    quadrant = crops[:, :half, :half].astype(np.float64).mean(axis=-1)
    energy = (np.diff(quadrant, axis=1) ** 2).mean(axis=(1, 2))
    return 1.0 / (1.0 + np.exp(-(energy / 1500.0 - 2.0)))


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_each_method_finds_a_numpy_models_evidence_in_batches(method: Method) -> None:
    crop = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    config = ExplainConfig(lime_samples=150, shap_samples=150, superpixels=16)
    calls: list[int] = []

    def score(crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (SIDE, SIDE, 3)
        calls.append(len(crops))
        return top_left_energy_score(crops)

    heat = perturbation_heat(method, crop, score, config)
    assert heat.shape == (SIDE, SIDE) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert heat[: SIDE // 2, : SIDE // 2].sum() / heat.sum() > 0.9
    assert sum(calls) == 150 and max(calls) <= config.perturbations_per_call
    result = deletion(crop, heat, top_left_energy_score)
    assert result.heat_drop > result.random_drop + 0.05, result
    again = perturbation_heat(method, crop, top_left_energy_score, config)
    np.testing.assert_array_equal(heat, again)  # seeded: the same answer every time


def test_the_regions_are_a_grid_of_about_the_count_asked() -> None:
    crop = np.zeros((160, 160, 3), dtype=np.uint8)
    segments = superpixels(crop, 50)
    assert segments.shape == (160, 160) and int(segments.max()) + 1 == 49
    sizes = np.bincount(segments.ravel())
    assert sizes.min() >= 22 * 22 and sizes.max() <= 23 * 23


def test_the_torch_free_modules_import_no_torch() -> None:
    """What the service imports for LIME and SHAP (and for the API), in a fresh interpreter."""
    script = (
        "import json, sys\n"
        "import src.explain.methods, src.explain.kinds, src.explain.runner, "
        "src.explain.deletion, src.explain.render, src.serve.routes.explain\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'timm', 'captum', 'sklearn', 'scipy', 'skimage'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
