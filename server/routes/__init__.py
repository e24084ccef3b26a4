"""HTTP routes: matching (verify, batch verify, identify, detect, embed), gallery management and 1:1, operations."""

from __future__ import annotations

from typing import Any

from ..errors import PROBLEM_JSON
from ..schemas import Problem

_DESCRIPTIONS = {
    401: "missing or invalid API key (`unauthorized`)",
    403: "the key lacks the scope (`forbidden`)",
    404: "not found (`identity_not_found`, `template_not_found`, `gallery_not_configured`, `embed_disabled`)",
    409: "conflict (`duplicate_identity`, `model_mismatch`, `no_templates`)",
    413: "too large (`payload_too_large`, `image_too_large`, `too_many_images`, `too_many_pairs`)",
    415: "unsupported media (`unsupported_media_type`, `unsupported_media`)",
    422: "unusable input (`invalid_request`, `invalid_image`, `image_too_small`, `no_face`, `invalid_argument`, ...)",
    429: "the inference queue is full (`overloaded`); see Retry-After",
    503: "models or gallery not loaded yet (`not_ready`)",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all problem+json."""
    return {
        s: {
            "model": Problem,
            "description": _DESCRIPTIONS.get(s, "error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for s in statuses
    }


IMAGE_ERRORS = (401, 403, 413, 415, 422, 429, 503)

__all__ = ["IMAGE_ERRORS", "problems"]
