"""The gradient methods, from Captum on the torch network: Grad-CAM and Integrated Gradients.

* ``gradcam``: :class:`captum.attr.LayerGradCam` on the last convolutional block with a usable
  grid (:func:`gradcam_layer`: 20x20 at 160 px); one forward and one backward pass.
* ``ig``: :class:`captum.attr.IntegratedGradients` from a blurred copy of the crop (a baseline
  without the fine detail blending leaves behind), per pixel.

Both read the fake class's log-odds, which moves with the probability. Torch and Captum are
imported here, so import this module only where a gradient explanation is made (the service
imports it on the first one, and only where torch is installed:
:func:`src.explain.kinds.method_support`).
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerGradCam
from torch import nn

from src.core.labels import fake_index
from src.explain.kinds import ExplainConfig, Method
from src.explain.methods import blurred_baseline, normalise, smooth
from src.models.checkpoint import ModelMetadata
from src.models.transforms import normalization

CAM_STRIDE = 8
IG_SMOOTHING = 32  # IG's map is smoothed with sigma = side / IG_SMOOTHING


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
