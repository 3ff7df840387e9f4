"""The pipe between the world host (``pearl.serving.world_host``) and its owner
(``pearl.serving.world_process.WorldProcess``): one JSON object per line. Free of torch and MPI: the owner
runs in the Triton stub.

    owner -> host   {"op": "generate", "request": {GenerationRequest, see encode_request}}
                    {"op": "cancel", "id": n}       end request n after the ranks' current round
                    {"op": "close"}                 finish the requests in flight, shut the world down, exit
                    end of file without "close"     the owner is gone: cancel everything, shut down, exit
    host -> owner   {"event": "ready", "limits": {PairLimits fields}, "ranks": {"draft": pid, "target": pid},
                     "helpers": [pids of the MPI process manager], "shm": [/dev/shm files the world maps]}
                    {"event": "start_failed", "message": "..."}   then the host exits
                    {"event": "tokens", "id": n, "tokens": [...], "counters": [...]}
                    {"event": "done", "id": n, "tokens": [...], "finish_reason": "stop" | ..., "counters": [...]}
                    {"event": "failed", "id": n, "message": "..."}   a rank raised: the host then exits (code 3)

``counters``: the request's counters so far in this world (``pearl.schema.COUNTERS`` order); a request's
last event is its "done" (or "failed"). Events of different requests interleave.
"""
from __future__ import annotations

import json
from dataclasses import asdict

from pearl.params import GenerationRequest, Mode, SamplingParams

EXIT_RANK_FAILED = 3  # the host's exit code when a rank raised: the owner starts a new world


def encode(message: dict) -> str:
    return json.dumps(message) + "\n"


def encode_request(request: GenerationRequest) -> dict:
    return {**asdict(request), "mode": request.mode.name.lower()}


def decode_request(fields: dict) -> GenerationRequest:
    """The request the owner validated (``pearl.serving.inputs``): rebuilt, not parsed again."""
    sampling = fields["sampling"]
    sampling = SamplingParams(**{**sampling, "stop_token_ids": tuple(map(tuple, sampling["stop_token_ids"]))})
    return GenerationRequest(**{**fields, "prompt_ids": tuple(fields["prompt_ids"]), "sampling": sampling,
                                "mode": Mode[fields["mode"].upper()]})
