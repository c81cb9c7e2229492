"""OpenAPI pieces the routes share: error responses and upload bodies."""

from __future__ import annotations

from typing import Any

from src.serve.schemas import ErrorResponse


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document that these statuses answer with the one error shape."""
    return {status: {"model": ErrorResponse} for status in statuses}


IMAGE_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The frame: JPEG, PNG, WebP or BMP (see settings).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
