"""The API contract: request and response models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


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
