"""Explanations inside the service, without starving ``/infer``.

* **Own admission**: at most ``max_concurrent`` explanations at once; one more is refused at
  once (503 + ``Retry-After``), and a place is given back only when its work has really ended,
  not when its caller gave up.
* **Own thread**: decoding, the face box, superpixels, LIME/SHAP's sampling and fitting, and the
  PNG run on one ``explain`` thread, never on the event loop or the model thread.
* **The model thread for the model**: the prediction goes through the service's batcher like any
  ``/infer`` image; the gradient methods run as one job on the model thread (Grad-CAM is one
  forward and backward pass); LIME and SHAP send their perturbed crops to the serving backend's
  ``score`` in jobs of ``perturbations_per_call``, so ``/infer`` batches take turns with them.
* **Deadline**: past it the caller gets 504, the explanation's next model job is refused, and its
  thread stops at the next batch boundary; the service stays healthy.

LIME and SHAP (:mod:`src.explain.methods`) are NumPy and OpenCV only, so they run on every
backend, ONNX Runtime in the torch-free image included, and import no torch. The torch network
for the gradient methods (:mod:`src.explain.gradients`, torch and Captum) is the serving
backend's own when that is torch, else it is loaded from the same checkpoint on the first
gradient explanation, on the model thread, where torch and Captum are installed; where they are
not, a gradient method is refused with 422 ``method_unavailable``
(:func:`src.explain.kinds.method_support`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from src.core.errors import (
    ClientDisconnectedError,
    InferenceTimeoutError,
    NoFaceDetectedError,
    OverloadedError,
    ServiceUnavailableError,
)
from src.core.labels import decide
from src.engine.executors import run_in
from src.engine.service import InferenceService, Prediction
from src.explain import render
from src.explain.kinds import GRADIENT_METHODS, ExplainConfig, Method, method_support
from src.explain.methods import perturbation_heat
from src.media.images import decode_image

if TYPE_CHECKING:  # torch and Captum load with the first gradient explanation, if ever
    from src.explain.gradients import GradientExplainer

logger = logging.getLogger(__name__)
T = TypeVar("T")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ExplainSettings:
    """What the service's ``DFD_EXPLAIN_*`` / ``DFD_MAX_CONCURRENT_EXPLAIN`` settings say."""

    max_concurrent: int = 1
    timeout_s: float = 30.0
    ig_steps: int = 32
    lime_samples: int = 200
    shap_samples: int = 200
    superpixels: int = 50
    perturbations_per_call: int = 16
    checkpoint_path: Path | None = None
    device: str = "cpu"
    torch_threads: int | None = None
    retry_after_s: int = 1

    def config(self) -> ExplainConfig:
        return ExplainConfig(
            ig_steps=self.ig_steps,
            lime_samples=self.lime_samples,
            shap_samples=self.shap_samples,
            superpixels=self.superpixels,
            perturbations_per_call=self.perturbations_per_call,
        )


@dataclass
class Explained:
    """One explained image: the prediction as ``/infer`` makes it, and where its evidence is."""

    prediction: Prediction
    method: Method
    face_box: Box | None
    heat: np.ndarray
    png: bytes
    timings_ms: dict[str, float] = field(default_factory=dict)


class ExplainGate:
    """At most ``limit`` explanations hold a place; a newcomer beyond that is refused at once."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_use = 0

    def take(self) -> Callable[[], None]:
        """Take a place or raise :class:`OverloadedError`; returns the function giving it back
        (idempotent)."""
        if self.in_use >= self.limit:
            raise OverloadedError(
                "an explanation is already running; explanations run one at a time "
                f"(at most {self.limit}), retry shortly",
                retry_after_s=self.retry_after_s,
            )
        self.in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_use -= 1

        return release


class _Clock:
    """Elapsed milliseconds per step."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round((time.perf_counter() - started) * 1000, 3)


class ExplanationRunner:
    """Explains images for one :class:`InferenceService` (one loaded model)."""

    def __init__(self, service: InferenceService, settings: ExplainSettings) -> None:
        self.service = service
        self.settings = settings
        self.gate = ExplainGate(settings.max_concurrent, settings.retry_after_s)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")
        self._gradients: GradientExplainer | None = None

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- requests
    async def explain_bytes(
        self,
        data: bytes,
        method: Method,
        *,
        deadline: float,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> Explained:
        """Decode, crop, score and explain one uploaded image, within ``deadline``
        (``time.perf_counter()``). Hold a place in ``service.admit`` around it."""
        release = self.gate.take()
        stop = _Stop(deadline)
        task = asyncio.ensure_future(self._explain(data, method, stop))
        task.add_done_callback(_finished(release))
        waiters: set[asyncio.Future[Any]] = {task}
        if disconnected is not None:
            waiters.add(disconnected)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=stop.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the request itself was cancelled (e.g. shutdown)
            stop.stopped = True
            raise
        if task in done:
            return task.result()
        # Not cancelled: the task ends by itself at its next step (each refuses to start once
        # stopped), and only then gives its place back, so abandoned work cannot pile up.
        stop.stopped = True
        if disconnected is not None and disconnected in done:
            raise ClientDisconnectedError()
        self.service.events.rejected("timeout")
        raise InferenceTimeoutError(
            "the explanation took longer than its time limit; try gradcam, the fastest method"
        )

    async def _explain(self, data: bytes, method: Method, stop: _Stop) -> Explained:
        clock = _Clock()
        with clock.step("preprocess_ms"):
            crop, box = await self._on_thread(stop, self._prepare, data)
        prediction = await self._predict(crop, clock.timings["preprocess_ms"])
        with clock.step("explain_ms"):
            heat = await self._heat(method, crop, stop)
        with clock.step("render_ms"):
            png = await self._on_thread(stop, render.overlay_png, crop, heat)
        return Explained(prediction, method, box, heat, png, clock.timings)

    # ----------------------------------------------------------------- steps
    def _prepare(self, data: bytes) -> tuple[np.ndarray, Box | None]:
        """Bytes -> (the crop the model scores, the face box in the image), with the service's
        own limits, face detector, margin and resize-and-crop: the crop ``/infer`` scores."""
        preparer = self.service.preparer
        rgb = decode_image(data, preparer.limits)
        cropper = preparer.face_cropper
        if cropper is None:
            return preparer.resize_crop(rgb), None
        face = cropper.detector.detect_largest(rgb)
        if face is None:
            raise NoFaceDetectedError("no face was found in the image, so it was not explained")
        return preparer.resize_crop(cropper.crop(rgb, face)), face.box

    async def _predict(self, crop: np.ndarray, preprocess_ms: float) -> Prediction:
        """The crop's score through the service's batcher, exactly as ``/infer`` gets it."""
        result = await self.service.batcher.submit(crop)
        fake_prob = result.value.fake_prob
        return Prediction(
            fake_prob=fake_prob,
            label=decide(fake_prob, self.service.threshold),
            batch_size=result.batch_size,
            preprocess_ms=preprocess_ms,
            queue_ms=result.queue_s * 1000,
            inference_ms=result.compute_s * 1000,
        )

    async def _heat(self, method: Method, crop: np.ndarray, stop: _Stop) -> np.ndarray:
        config = self.settings.config()
        if method in GRADIENT_METHODS:
            method_support(self.service.describe().backend).check(method)
            gradients = await self._gradient_explainer(stop)
            return await self._on_model_thread(stop, gradients.explain, method, crop, config)
        loop = asyncio.get_running_loop()

        def score(crops: np.ndarray) -> np.ndarray:
            """On the explain thread: one model-thread job per call, refused past the deadline."""
            job = self._on_model_thread(stop, self._score, crops)
            future = asyncio.run_coroutine_threadsafe(job, loop)
            return future.result(timeout=max(0.0, stop.remaining()) + 1.0)

        return await self._on_thread(stop, perturbation_heat, method, crop, score, config)

    def _score(self, crops: np.ndarray) -> np.ndarray:
        scores = self.service.backend.score(list(crops))
        return np.asarray([s.fake_prob for s in scores], dtype=np.float64)

    async def _gradient_explainer(self, stop: _Stop) -> GradientExplainer:
        if self._gradients is None:
            self._gradients = await self._on_model_thread(stop, self._load_gradients)
        return self._gradients

    def _load_gradients(self) -> GradientExplainer:
        """The serving backend's torch network, or the same checkpoint loaded for torch."""
        gradients = _gradients_module()
        if self._gradients is not None:
            return self._gradients
        model = getattr(self.service.backend, "model", None)
        if self.service.describe().backend != "torch" or model is None:
            from src.models.backends import torch as torch_backend

            if self.settings.checkpoint_path is None:
                raise ValueError("no checkpoint to load the torch network for explanations from")
            loaded = torch_backend.load(
                self.settings.checkpoint_path,
                self.settings.device,
                threads=self.settings.torch_threads,
            )
            model = loaded.model
            logger.info("torch network loaded for gradient explanations")
        explainer: GradientExplainer = gradients.GradientExplainer(model, self.service.metadata)
        return explainer

    async def _on_thread(self, stop: _Stop, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self._thread, stop.guard(fn), *args)

    async def _on_model_thread(self, stop: _Stop, fn: Callable[..., T], *args: Any) -> T:
        return await self.service.run_on_model_thread(stop.guard(fn), *args)


def _gradients_module() -> ModuleType:
    """:mod:`src.explain.gradients`, imported on the first gradient explanation (torch and
    Captum). :func:`method_support` refuses the gradient methods where those are not installed;
    one that is installed but does not import is the service's fault (503)."""
    try:
        return importlib.import_module("src.explain.gradients")
    except ImportError as exc:
        raise ServiceUnavailableError(
            f"the gradient explanations need torch and Captum, which did not import ({exc.name})"
        ) from exc


def _finished(release: Callable[[], None]) -> Callable[[asyncio.Future[Any]], None]:
    """Give the place back, and collect the result of a task nobody awaits any more."""

    def done(task: asyncio.Future[Any]) -> None:
        release()
        if not task.cancelled() and task.exception() is not None:
            logger.debug("abandoned explanation ended: %s", task.exception())

    return done


class _Stop:
    """An explanation's deadline, and whether it was abandoned: jobs check it before starting."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped = False

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def guard(self, fn: Callable[..., T]) -> Callable[..., T]:
        def guarded(*args: Any) -> T:
            if self.stopped or time.perf_counter() >= self.deadline:
                raise InferenceTimeoutError("the explanation's deadline passed")
            return fn(*args)

        return guarded
