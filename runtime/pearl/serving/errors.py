"""Error kinds of the Python models and the Triton error codes they travel as (one table for every model)."""
from __future__ import annotations

# kind -> the pb_utils.TritonError code's name (its codes exist only inside the stub, so names here)
# "overloaded": refused for a full queue; UNAVAILABLE (retry later), counted apart from bad input
KIND_CODES = {"error": "INTERNAL", "cancelled": "CANCELLED", "timeout": "UNAVAILABLE", "invalid": "INVALID_ARG",
              "unavailable": "UNAVAILABLE", "overloaded": "UNAVAILABLE"}


def error_response(pb_utils, message: str, kind: str = "error"):
    """A Triton error response of this kind."""
    code = getattr(pb_utils.TritonError, KIND_CODES[kind])
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def kind_of(pb_utils, code) -> str:
    """The kind for a TritonError code a step answered with (timeouts come back as "unavailable")."""
    for kind in ("invalid", "cancelled", "unavailable"):
        if code == getattr(pb_utils.TritonError, KIND_CODES[kind]):
            return kind
    return "error"
