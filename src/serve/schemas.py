"""The API contract: request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from src.explain.kinds import Method


class Timings(BaseModel):
    preprocess_ms: float = Field(description="Decode, validation and preprocessing.")
    queue_ms: float = Field(description="Wait for a place in a batch.")
    inference_ms: float = Field(description="The forward pass of the batch this image ran in.")
    total_ms: float = Field(description="From the upload being read to the answer.")
    batch_size: int = Field(description="Images in the forward pass this image ran in.")


class InferenceResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f1c9a0e5b7d4e2a9c8b6d4f2e0a1b3c",
                    "fake_prob": 0.9312,
                    "real_prob": 0.0688,
                    "label": "fake",
                    "threshold": 0.5,
                    "model_version": "demo-1.0.0",
                    "model_architecture": "efficientnet_lite0",
                    "timings": {
                        "preprocess_ms": 3.1,
                        "queue_ms": 0.4,
                        "inference_ms": 21.7,
                        "total_ms": 26.0,
                        "batch_size": 1,
                    },
                }
            ]
        },
    )

    request_id: str
    fake_prob: float = Field(ge=0.0, le=1.0, description="Probability that the frame is fake.")
    real_prob: float = Field(ge=0.0, le=1.0, description="1 - fake_prob.")
    label: Literal["real", "fake"] = Field(description="fake when fake_prob >= threshold.")
    threshold: float
    model_version: str
    model_architecture: str
    timings: Timings


class FaceBox(BaseModel):
    box: list[int] = Field(description="[x, y, w, h] in the frame's pixels.")
    score: float = Field(description="The face detector's confidence.")


class VideoFrameResult(BaseModel):
    index: int = Field(description="Frame number in the video.")
    time_s: float = Field(description="Presentation time of the frame, in seconds.")
    fake_prob: float | None = Field(
        description="This frame's score; null when the person followed is not in it."
    )
    face: FaceBox | None = Field(description="The face scored; null without a face crop.")


class VideoDescription(BaseModel):
    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    frames_sampled: int
    frames_scored: int = Field(description="Sampled frames with the face in them, aggregated.")


class VideoTimings(BaseModel):
    decode_ms: float = Field(description="Demuxing and decoding the sampled frames.")
    detect_ms: float = Field(description="Face detection, tracking and cropping.")
    inference_ms: float = Field(description="From the first crop queued to the last scored.")
    total_ms: float = Field(description="From the upload being read to the answer.")


class VideoResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    fake_prob: float = Field(ge=0.0, le=1.0, description="The video's aggregated score.")
    real_prob: float = Field(ge=0.0, le=1.0, description="1 - fake_prob.")
    label: Literal["real", "fake"]
    threshold: float
    model_version: str
    aggregate: Literal["mean", "max", "confident"]
    video: VideoDescription
    frames: list[VideoFrameResult]
    timings: VideoTimings


class ItemError(BaseModel):
    code: str
    message: str


class BatchItemResult(BaseModel):
    index: int
    filename: str | None
    fake_prob: float = Field(ge=0.0, le=1.0)
    real_prob: float = Field(ge=0.0, le=1.0)
    label: Literal["real", "fake"]


class BatchItemFailure(BaseModel):
    index: int
    filename: str | None
    error: ItemError


class BatchResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    model_version: str
    threshold: float
    results: list[BatchItemResult | BatchItemFailure] = Field(
        description="One entry per file, in the order sent: a score, or that file's error."
    )


class ExplanationTimings(BaseModel):
    preprocess_ms: float = Field(description="Decode, face detection and crop.")
    explain_ms: float = Field(description="The attribution method, model passes included.")
    render_ms: float = Field(description="The overlay PNG.")


class Explanation(BaseModel):
    method: Method
    face_box: list[int] | None = Field(
        description="[x, y, w, h] of the face explained, in the image's pixels; null without a "
        "face crop (the whole image, resized and centre-cropped, was explained)."
    )
    heatmap_png: str = Field(
        description="Base64 PNG: the crop the model scored with the heat overlaid (red: most "
        "evidence of a fake)."
    )
    heatmap: list[list[float]] = Field(
        description="The heat over the crop as rows (top first) of values in [0, 1]; Grad-CAM's "
        "own grid, other methods averaged down to at most 32 x 32."
    )
    timings: ExplanationTimings


class ExplainResponse(InferenceResponse):
    """``/infer``'s answer for the same image, plus where in the face the evidence is."""

    explanation: Explanation


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


# History, feedback and jobs (src/serve/routes/predictions.py, jobs.py)
class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Literal["real", "fake"] = Field(description="The ground truth for this input.")
    comment: str | None = Field(default=None, max_length=2000)


class FeedbackView(BaseModel):
    label: Literal["real", "fake"]
    comment: str | None
    revision: int = Field(description="1 for the first feedback; each replacement adds one.")
    previous_label: Literal["real", "fake"] | None = Field(
        description="The label this feedback replaced, if it replaced one."
    )
    created_at: datetime
    updated_at: datetime


class FeedbackResponse(BaseModel):
    request_id: str
    replaced: bool = Field(description="True when earlier feedback was replaced.")
    feedback: FeedbackView


class StoredPrediction(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    created_at: datetime = Field(description="When the answer was given (UTC).")
    key_id: str | None = Field(description="The API key's id (a hash prefix, never the key).")
    kind: Literal["image", "video", "batch-item"]
    sha256: str = Field(description="SHA-256 of the uploaded bytes.")
    input_bytes: int
    media_type: str | None
    model_name: str
    model_version: str
    fake_prob: float
    label: Literal["real", "fake"]
    threshold: float
    cached: bool = Field(description="Answered from the result cache.")
    timings: dict[str, Any]
    frame_scores: list[dict[str, Any]] | None = Field(description="Per-frame scores (videos).")
    parent_request_id: str | None = Field(description="The batch request of a batch item.")
    feedback: FeedbackView | None


class PredictionPage(BaseModel):
    items: list[StoredPrediction]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class JobResponse(BaseModel):
    job_id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    attempts: int
    created_at: datetime
    updated_at: datetime
    result: dict[str, Any] | None = Field(description="The answer, once done.")
    error: str | None = Field(description="Why it failed, once failed.")


class ReadinessResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ready"] = "ready"
    model_version: str
    model_architecture: str
    device: str
    backend: str = Field(description="The model runtime: torch or onnxruntime.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code.", examples=["invalid_image"])
    message: str = Field(description="What went wrong, for a person.")
    request_id: str | None = Field(description="The request's id, as in X-Request-ID.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    """The one JSON error shape every non-2xx answer carries."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}
