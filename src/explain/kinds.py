"""The explanation methods' names and knobs, defined once, and which methods a service can run
(light: the API imports this module without torch)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal, get_args

from src.core.errors import InvalidParameterError

Method = Literal["gradcam", "ig", "lime", "shap"]
METHODS: tuple[Method, ...] = get_args(Method)
GRADIENT_METHODS: frozenset[Method] = frozenset({"gradcam", "ig"})
"""Methods that need the torch network's gradients (torch and Captum); the others only call the
serving backend's scoring function (NumPy and OpenCV), so they run on any backend."""
GRADIENT_MODULES: tuple[str, ...] = ("torch", "captum")
"""What the gradient methods import: on a backend other than torch, the service loads the torch
network from the same checkpoint on the first gradient explanation, where these are installed."""


class MethodUnavailableError(InvalidParameterError):
    """This explanation method needs what this service does not have."""

    code = "method_unavailable"


@dataclass(frozen=True)
class MethodSupport:
    """Which methods a service on ``backend`` can run, and why the others cannot."""

    backend: str
    available: tuple[Method, ...]
    missing: str | None = None
    """The first of :data:`GRADIENT_MODULES` not installed (None: the gradient methods run)."""

    @property
    def default(self) -> Method:
        """Grad-CAM (the fastest) where it runs, else LIME."""
        return "gradcam" if "gradcam" in self.available else "lime"

    def why_not(self, method: Method) -> str | None:
        """Why ``method`` cannot run here (None: it can)."""
        if method in self.available:
            return None
        return (
            f"the {method} explanation needs the torch network (PyTorch and Captum), and this "
            f"installation has no {self.missing} (the service runs on {self.backend}): this "
            f"service explains with {', '.join(self.available)}; for gradcam and ig, serve the "
            "image with torch (the cuda target) or install requirements-torch.txt"
        )

    def check(self, method: Method) -> None:
        """Raise :class:`MethodUnavailableError` (422) unless ``method`` can run here."""
        reason = self.why_not(method)
        if reason is not None:
            raise MethodUnavailableError(reason)


def missing_gradient_module() -> str | None:
    """The first of :data:`GRADIENT_MODULES` that is not installed, looked up without importing
    it (None when all are)."""
    for name in GRADIENT_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses it, a broken parent
            found = False
        if not found:
            return name
    return None


def method_support(backend: str) -> MethodSupport:
    """LIME and SHAP on every backend; Grad-CAM and IG where torch and Captum are installed
    (loaded on their first use when the backend is not torch itself)."""
    missing = missing_gradient_module()
    if missing is None:
        return MethodSupport(backend=backend, available=METHODS)
    perturbation = tuple(m for m in METHODS if m not in GRADIENT_METHODS)
    return MethodSupport(backend=backend, available=perturbation, missing=missing)


@dataclass(frozen=True)
class ExplainConfig:
    """How hard each method works (the service's ``DFD_EXPLAIN_*`` settings)."""

    ig_steps: int = 32
    lime_samples: int = 200
    shap_samples: int = 200
    superpixels: int = 50
    perturbations_per_call: int = 16
    seed: int = 0
