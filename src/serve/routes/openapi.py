"""OpenAPI pieces the routes share: error responses and upload bodies."""

from __future__ import annotations

from typing import Any

from src.serve.schemas import ErrorResponse


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document that these statuses answer with the one error shape."""
    return {status: {"model": ErrorResponse} for status in statuses}


def upload_body(
    field: str, description: str, raw_type: str | None = None, *, many: bool = False
) -> dict[str, Any]:
    """An ``openapi_extra`` documenting a multipart upload in ``field`` (an array of files when
    ``many``), and a raw body of ``raw_type`` as the alternative."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else dict(binary)
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [field],
                "properties": {field: {**schema, "description": description}},
            }
        }
    }
    if raw_type is not None:
        content[raw_type] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


IMAGE_UPLOAD_BODY = upload_body(
    "file", "The frame: JPEG, PNG, WebP or BMP (see settings).", "image/*"
)
VIDEO_UPLOAD_BODY = upload_body("file", "The video: MP4/MOV, WebM/MKV or AVI.", "video/*")
BATCH_UPLOAD_BODY = upload_body("files", "The images, 1 to DFD_MAX_BATCH_ITEMS of them.", many=True)
