"""Each method finds evidence where a model is known to look, and the deletion metric sees it.

The model here is built so that the answer is known: its fake log-odds is the texture energy
(squared Laplacian) of the crop's top-left quadrant, and the crop is noise everywhere. Every
method must put its heat there, and deleting that heat must lower the score more than deleting
random blobs does. (LIME and SHAP's own algorithms, without torch: ``test_perturbation.py``.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from src.explain.deletion import deletion, random_pixels, top_pixels
from src.explain.gradients import GradientExplainer, gradcam_layer
from src.explain.kinds import METHODS, Method
from src.explain.methods import (
    ExplainConfig,
    ScoreFn,
    explain_crop,
    log_odds,
    normalise,
    superpixels,
)
from src.models.backends import torch as torch_backend
from src.models.checkpoint import ModelMetadata

SIDE = 64
CONFIG = ExplainConfig(ig_steps=16, lime_samples=120, shap_samples=120, superpixels=36)


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class TopLeftFeature(nn.Module):
    """Channel 0 fires on texture in the top-left quadrant only; channel 1 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.ones(1, 2, SIDE, SIDE)
        mask[:, 0, SIDE // 2 :, :] = 0.0
        mask[:, 0, :, SIDE // 2 :] = 0.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class TopLeftTexture(nn.Module):
    """Fake log-odds = texture energy (squared Laplacian) in the top-left quadrant, minus a
    constant; a second feature sees texture everywhere and is ignored by the head."""

    def __init__(self) -> None:
        super().__init__()
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        conv.weight.data = laplacian.expand(2, 3, 3, 3).clone() / 3
        self.blocks = nn.Sequential(conv, Square(), TopLeftFeature())
        self.scale = 1.0  # set to the test crop's energy, so that scores do not saturate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = self.blocks(x)[:, 0].flatten(1).sum(1) / (SIDE * SIDE / 4)
        fake = 4.0 * (energy / self.scale - 0.5)
        return torch.stack([torch.zeros_like(fake), fake], dim=1)


@pytest.fixture(scope="module")
def model(metadata: ModelMetadata, crop: np.ndarray) -> TopLeftTexture:
    network = TopLeftTexture().eval()
    gradients = GradientExplainer(network, metadata)
    with torch.no_grad():
        network.scale = float(gradients._logits(torch.from_numpy(crop).float()[None])) / 4 + 0.5
    return network


@pytest.fixture(scope="module")
def metadata() -> ModelMetadata:
    return ModelMetadata(architecture="top-left", input_size=SIDE, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def score_of(model: TopLeftTexture, metadata: ModelMetadata) -> tuple[GradientExplainer, ScoreFn]:
    gradients = GradientExplainer(model, metadata)

    def score(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            pixels = torch.from_numpy(crops).float()
            return torch.sigmoid(gradients._logits(pixels)).numpy().astype(np.float64)

    return gradients, score


def make_face_like() -> np.ndarray:
    """Smooth regions with edges, where SLIC finds its own superpixels."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    image = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    image[..., 0] = (xx * 4) % 256
    image[..., 1] = np.where((xx - 32) ** 2 + (yy - 32) ** 2 < 400, 200, 40)
    image[..., 2] = (yy * 4) % 256
    return image


def top_left_share(heat: np.ndarray) -> float:
    half = heat.shape[0] // 2
    return float(heat[:half, :half].sum() / max(heat.sum(), 1e-12))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_puts_the_heat_where_the_model_looks(
    model: TopLeftTexture, metadata: ModelMetadata, crop: np.ndarray, method: Method
) -> None:
    gradients, score = score_of(model, metadata)
    heat = explain_crop(method, crop, CONFIG, gradients=gradients, score=score)
    assert heat.ndim == 2 and heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert top_left_share(heat) > 0.7, f"{method}: {top_left_share(heat):.2f} of the heat"
    result = deletion(crop, heat, score)
    assert result.heat_drop > result.random_drop + 0.05, result


def test_gradcam_reads_a_block_with_a_usable_grid() -> None:
    from src.models.network import build_model

    network = build_model("efficientnet_lite0").eval()
    layer = gradcam_layer(network, 160)
    sides: list[int] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        network(torch.zeros(1, 3, 160, 160))
    hook.remove()
    assert sides == [20], "EfficientNet's last stride-8 stage: 20x20 at 160 px"
    assert layer is network.blocks[2]


def test_gradient_methods_run_on_a_real_checkpoint(checkpoint_path: Path) -> None:
    backend = torch_backend.load(checkpoint_path, "cpu")
    gradients = GradientExplainer(backend.model, backend.metadata)
    crop = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cam = gradients.gradcam(crop)
    assert cam.ndim == 2 and cam.shape[0] == cam.shape[1] >= 2
    ig = gradients.integrated_gradients(crop, steps=4)
    assert ig.shape == (32, 32)
    for heat in (cam, ig):
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


def test_a_method_without_what_it_needs_is_refused(crop: np.ndarray) -> None:
    with pytest.raises(ValueError, match="torch network"):
        explain_crop("gradcam", crop, CONFIG)
    with pytest.raises(ValueError, match="scoring function"):
        explain_crop("lime", crop, CONFIG)


def test_helpers_keep_their_promises(crop: np.ndarray) -> None:
    assert np.allclose(normalise(np.array([[-1.0, 0.0], [1.0, 3.0]])), [[0, 0], [1 / 3, 1]])
    assert not normalise(np.full((2, 2), -1.0)).any()
    assert log_odds(np.array([0.5]))[0] == pytest.approx(0.0)
    assert np.isfinite(log_odds(np.array([0.0, 1.0]))).all()
    for image in (crop, np.full_like(crop, 128), make_face_like()):
        segments = superpixels(image, 25)
        assert segments.shape == image.shape[:2] and segments.min() == 0
        assert set(np.unique(segments)) == set(range(segments.max() + 1))
        assert segments.max() + 1 >= 6, "enough regions for LIME and SHAP to weigh"
    rng = np.random.default_rng(0)
    flat = np.zeros((10, 10), dtype=np.float32)  # all ties: still exactly the count asked
    assert top_pixels(flat, 0.2, rng).sum() == 20
    assert random_pixels(40, 0.2, rng).sum() == 320


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_lime_and_shap_give_the_same_map_on_onnx_runtime_as_on_torch(
    checkpoint_path: Path, tmp_path: Path, method: Method
) -> None:
    """One implementation for every backend: the same masks, and scores within the export's
    parity tolerance, give the same heat map."""
    import shutil

    from src.export import export_onnx
    from src.models.backends import onnxruntime as ort_backend

    checkpoint = tmp_path / "model.pt"
    shutil.copy(checkpoint_path, checkpoint)
    export_onnx(checkpoint)
    backends = [torch_backend.load(checkpoint, "cpu"), ort_backend.load(checkpoint)]
    size = backends[0].metadata.input_size
    crop = np.random.default_rng(2).integers(0, 256, (size, size, 3), dtype=np.uint8)
    config = ExplainConfig(lime_samples=60, shap_samples=60, superpixels=16)
    heats = [
        explain_crop(
            method,
            crop,
            config,
            score=lambda crops, b=backend: np.array([s.fake_prob for s in b.score(list(crops))]),
        )
        for backend in backends
    ]
    assert heats[0].max() == pytest.approx(1.0)
    np.testing.assert_allclose(heats[0], heats[1], atol=1e-3)
