"""Error kinds of the Python models and the Triton error codes they travel as (one table for every model).

Two hops drop the code and keep the message: a BLS call (the python backend 2.51 hands ``pearl_bls`` every
step's error as INTERNAL) and a gRPC stream (Triton's ModelStreamInferResponse has only ``error_message``). So
every error message ends with its code in brackets, ``... [INVALID_ARG]``, and ``kind_of_message`` reads the
kind back (``pearl_bls`` for its steps' errors, the OpenAI frontend for the HTTP status).
"""
from __future__ import annotations

import re

# kind -> the pb_utils.TritonError code's name (its codes exist only inside the stub, so names here)
# "overloaded": refused for a full queue; UNAVAILABLE (retry later), counted apart from bad input
KIND_CODES = {"error": "INTERNAL", "cancelled": "CANCELLED", "timeout": "UNAVAILABLE", "invalid": "INVALID_ARG",
              "unavailable": "UNAVAILABLE", "overloaded": "UNAVAILABLE"}
CODE_TAG = re.compile(r" \[([A-Z_]+)\]$")


def error_response(pb_utils, message: str, kind: str = "error"):
    """A Triton error response of this kind, its code also ending the message."""
    code = getattr(pb_utils.TritonError, KIND_CODES[kind])
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(tagged(message, kind), code))


def tagged(message: str, kind: str) -> str:
    return f"{CODE_TAG.sub('', message)} [{KIND_CODES[kind]}]"


def kind_of_message(message: str, default: str = "error") -> tuple[str, str]:
    """(kind, the message without its tag) of a tagged message; an untagged one (Triton's own) is ``default``."""
    match = CODE_TAG.search(message)
    # UNAVAILABLE is also timeout's and overloaded's code: read back, it is "unavailable" (the same status)
    codes = {code: kind for kind, code in KIND_CODES.items() if kind not in ("timeout", "overloaded")}
    if match is None or match.group(1) not in codes:
        return default, message
    return codes[match.group(1)], message[:match.start()]


def kind_of(pb_utils, code) -> str:
    """The kind for a TritonError code a step answered with (timeouts come back as "unavailable")."""
    for kind in ("invalid", "cancelled", "unavailable"):
        if code == getattr(pb_utils.TritonError, KIND_CODES[kind]):
            return kind
    return "error"
