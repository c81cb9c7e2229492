"""Where in the face crop the model found "fake": four attribution methods, all from Captum.

Every method takes the uint8 SxSx3 crop the model scores (``transforms.build_crop``'s output,
after the face crop) and returns a non-negative heat map normalised to [0, 1], where high means
"this region pushed the fake probability up" (the gradient methods read the fake class's
log-odds, which moves with the probability):

* ``gradcam``: :class:`captum.attr.LayerGradCam` on the last convolutional block with a usable
  grid (:func:`gradcam_layer`: 20x20 at 160 px); one forward and one backward pass.
* ``ig``: :class:`captum.attr.IntegratedGradients` from a blurred copy of the crop (a baseline
  without the fine detail blending leaves behind), per pixel.
* ``lime`` / ``shap``: :class:`captum.attr.Lime` and :class:`captum.attr.KernelShap` over SLIC
  superpixels (``skimage.segmentation.slic``); a removed superpixel is replaced by the blurred
  baseline. They only call a scoring function, so they explain whatever runtime serves the model
  (ONNX Runtime or torch) and need no gradients.

Gradient methods need the torch network (:class:`GradientExplainer`); the perturbation methods
need a :data:`ScoreFn`. Torch and Captum are imported here, so import this module only where an
explanation is made (the service imports it on the first one).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch
from captum.attr import IntegratedGradients, KernelShap, LayerGradCam, Lime
from torch import nn

from src.core.labels import fake_index
from src.explain.kinds import GRADIENT_METHODS, ExplainConfig, Method
from src.models.checkpoint import ModelMetadata
from src.models.transforms import normalization

CAM_STRIDE = 8
IG_SMOOTHING = 32  # IG's map is smoothed with sigma = side / IG_SMOOTHING
ScoreFn = Callable[[np.ndarray], np.ndarray]
"""uint8 (N, S, S, 3) crops -> float (N,) fake probabilities."""


def blurred_baseline(crop: np.ndarray) -> np.ndarray:
    """The crop with its fine detail removed: what "deleted" pixels become, for IG, LIME, SHAP
    and the deletion metric. Blur rather than grey, so a deletion adds no new edges that a
    blend detector could read as a seam."""
    sigma = max(1.0, crop.shape[0] / 16)
    return cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma)


def superpixels(crop: np.ndarray, count: int) -> np.ndarray:
    """SLIC segments of the crop as an int (S, S) map with labels 0..K-1; a regular grid of
    about ``count`` cells where SLIC finds too few (noise or flat images), so LIME and SHAP
    always have regions to weigh."""
    from skimage.segmentation import slic

    labels = slic(crop, n_segments=count, compactness=10.0, start_label=0, channel_axis=-1)
    _, dense = np.unique(labels, return_inverse=True)
    if int(dense.max()) + 1 >= max(4, count // 4):
        return dense.reshape(labels.shape).astype(np.int64)
    return grid_cells(crop.shape[0], count)


def grid_cells(side: int, count: int) -> np.ndarray:
    """A ``side`` x ``side`` map of about ``count`` square cells, labelled row by row."""
    cells = max(2, round(count**0.5))
    index = (np.arange(side) * cells) // side
    return (index[:, None] * cells + index[None, :]).astype(np.int64)


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    """The fake probability as log-odds (float32): what LIME and SHAP fit, as the gradient
    methods read the network's log-odds. A linear surrogate fits a saturated probability badly
    (0.99 and 0.9999 look alike), and on the demo test fakes LIME's map fitted to the log-odds
    beat random deletion where the one fitted to the probability did not."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


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


def gradcam_layer(model: nn.Module, input_size: int) -> nn.Module:
    """The layer Grad-CAM reads: the last block of timm's ``blocks`` whose output still has at
    least ``input_size / CAM_STRIDE`` cells a side (EfficientNet's last stride-8 stage: 20x20
    at 160 px), else the head (``bn2``), else the last ``Conv2d``.

    Not the head: on the demo test fakes the deletion metric fell with every coarser layer
    (``python -m src.train.evaluate --explain``): deleting the hottest fifth of the stride-8
    map lowered the fake probability about 3x as much as deleting random blobs, the stride-16
    maps about as much as random, and the head's 5x5 map less than random. Blending seams are
    thin; a coarse grid smears them over the whole face.
    """
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks):
        sides: list[int] = []
        hooks = [
            block.register_forward_hook(lambda _m, _i, out: sides.append(int(out.shape[-1])))
            for block in blocks
        ]
        try:
            parameter = next(model.parameters())
            blank = torch.zeros(1, 3, input_size, input_size, device=parameter.device)
            with torch.no_grad():
                model(blank)
        finally:
            for hook in hooks:
                hook.remove()
        wide_enough = [i for i, side in enumerate(sides) if side * CAM_STRIDE >= input_size]
        if wide_enough:
            return blocks[wide_enough[-1]]
    head = getattr(model, "bn2", None)
    if isinstance(head, nn.Module):
        return head
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM")
    return convs[-1]


class GradientExplainer:
    """Grad-CAM and Integrated Gradients on a torch network; call it from one thread (the
    service's model thread), as every other use of the model."""

    def __init__(self, model: nn.Module, metadata: ModelMetadata) -> None:
        self.model = model
        self.metadata = metadata
        self.target = fake_index(metadata.labels)
        parameter = next(model.parameters())
        self.device = parameter.device
        mean, inv_std = normalization(metadata)
        self._mean = torch.from_numpy(mean).to(self.device).view(1, 1, 1, 3)
        self._inv_std = torch.from_numpy(inv_std).to(self.device).view(1, 1, 1, 3)
        self._gradcam = LayerGradCam(self._logits, gradcam_layer(model, metadata.input_size))
        self._ig = IntegratedGradients(self._logits)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """float (N, S, S, 3) pixels in 0..255 -> the fake class's log-odds, (N,).

        Normalised exactly as in serving. The log-odds (the fake logit minus the log-sum-exp of
        the others; for two classes, the logit difference) rises and falls with the fake
        probability, which the fake logit alone need not: a region can raise every logit."""
        batch = ((pixels - self._mean) * self._inv_std).permute(0, 3, 1, 2)
        logits: torch.Tensor = self.model(batch).float()
        others = torch.cat([logits[:, : self.target], logits[:, self.target + 1 :]], dim=1)
        return logits[:, self.target] - torch.logsumexp(others, dim=1)

    def _pixels(self, crop: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(crop)).to(self.device, torch.float32)[None]

    def gradcam(self, crop: np.ndarray) -> np.ndarray:
        """The Grad-CAM grid of the fake class (ReLU of the gradient-weighted activations)."""
        with torch.enable_grad():
            attribution = self._gradcam.attribute(self._pixels(crop), relu_attributions=True)
        return normalise(attribution[0, 0].detach().cpu().numpy())

    def integrated_gradients(self, crop: np.ndarray, steps: int) -> np.ndarray:
        """Per-pixel IG of the fake logit from the blurred baseline, summed over channels."""
        baseline = self._pixels(blurred_baseline(crop))
        with torch.enable_grad():
            attribution = self._ig.attribute(
                self._pixels(crop),
                baselines=baseline,
                n_steps=steps,
                internal_batch_size=min(steps, 16),
            )
        per_pixel = attribution[0].sum(dim=-1).detach().cpu().numpy()
        return normalise(smooth(per_pixel, crop.shape[0] / IG_SMOOTHING))

    def explain(self, method: Method, crop: np.ndarray, config: ExplainConfig) -> np.ndarray:
        if method == "gradcam":
            return self.gradcam(crop)
        if method == "ig":
            return self.integrated_gradients(crop, config.ig_steps)
        raise ValueError(f"{method} is not a gradient method")


def perturbation_heat(
    method: Method, crop: np.ndarray, score: ScoreFn, config: ExplainConfig
) -> np.ndarray:
    """LIME or Kernel SHAP weights of each superpixel for the fake log-odds, painted back
    onto its pixels. ``score`` is called with batches of at most
    ``config.perturbations_per_call`` crops."""
    segments = superpixels(crop, config.superpixels)
    pixels = torch.from_numpy(np.ascontiguousarray(crop)).float()[None]
    baseline = torch.from_numpy(blurred_baseline(crop)).float()[None]
    mask = torch.from_numpy(segments)[None, :, :, None].expand_as(pixels)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        crops = batch.detach().clamp(0, 255).round().to(torch.uint8).numpy()
        return torch.from_numpy(log_odds(score(crops)))

    torch.manual_seed(config.seed)  # Captum draws its samples from torch's generator
    if method == "lime":
        attribution = Lime(forward).attribute(
            pixels,
            baselines=baseline,
            feature_mask=mask,
            n_samples=config.lime_samples,
            perturbations_per_eval=config.perturbations_per_call,
        )
    elif method == "shap":
        attribution = KernelShap(forward).attribute(
            pixels,
            baselines=baseline,
            feature_mask=mask,
            n_samples=config.shap_samples,
            perturbations_per_eval=config.perturbations_per_call,
        )
    else:
        raise ValueError(f"{method} is not a perturbation method")
    return normalise(attribution[0, :, :, 0].detach().numpy())


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
