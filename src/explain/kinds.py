"""The explanation methods' names and knobs, defined once (light: the API imports this module
without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Method = Literal["gradcam", "ig", "lime", "shap"]
METHODS: tuple[Method, ...] = get_args(Method)
GRADIENT_METHODS: frozenset[Method] = frozenset({"gradcam", "ig"})
"""Methods that need the torch network's gradients; the others only call a scoring function."""


@dataclass(frozen=True)
class ExplainConfig:
    """How hard each method works (the service's ``DFD_EXPLAIN_*`` settings)."""

    ig_steps: int = 32
    lime_samples: int = 200
    shap_samples: int = 200
    superpixels: int = 50
    perturbations_per_call: int = 16
    seed: int = 0
