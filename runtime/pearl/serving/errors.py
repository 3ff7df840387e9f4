"""Error kinds of the Python models and the Triton error codes they travel as (one table for every model).

A gRPC stream's error response carries its message but not its code (Triton's ModelStreamInferResponse has
only ``error_message``), so the model that streaming clients call (``pearl_bls``) ends each error message with
its code in brackets, ``... [INVALID_ARG]``: ``kind_of_message`` reads the kind back (the OpenAI frontend turns
it into an HTTP status).
"""
from __future__ import annotations

import re

# kind -> the pb_utils.TritonError code's name (its codes exist only inside the stub, so names here)
KIND_CODES = {"error": "INTERNAL", "cancelled": "CANCELLED", "timeout": "UNAVAILABLE", "invalid": "INVALID_ARG",
              "unavailable": "UNAVAILABLE"}
CODE_TAG = re.compile(r" \[([A-Z_]+)\]$")


def error_response(pb_utils, message: str, kind: str = "error", tag_code: bool = False):
    """A Triton error response of this kind (``tag_code``: its code also ends the message)."""
    code = getattr(pb_utils.TritonError, KIND_CODES[kind])
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(tagged(message, kind) if tag_code else message,
                                                                 code))


def tagged(message: str, kind: str) -> str:
    return f"{CODE_TAG.sub('', message)} [{KIND_CODES[kind]}]"


def kind_of_message(message: str) -> tuple[str, str]:
    """(kind, the message without its tag) of a tagged message; an untagged one is an "error"."""
    match = CODE_TAG.search(message)
    codes = {code: kind for kind, code in KIND_CODES.items() if kind != "timeout"}
    if match is None or match.group(1) not in codes:
        return "error", message
    return codes[match.group(1)], message[:match.start()]


def kind_of(pb_utils, code) -> str:
    """The kind for a TritonError code a step answered with (timeouts come back as "unavailable")."""
    for kind in ("invalid", "cancelled", "unavailable"):
        if code == getattr(pb_utils.TritonError, KIND_CODES[kind]):
            return kind
    return "error"
