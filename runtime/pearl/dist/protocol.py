"""The message protocol between the driver (the process that owns the Engine) and the worker ranks.

Communicators
- ``driver``: an intercommunicator. The driver is rank 0 of its side; the workers are remote ranks
  DRAFT_RANK (0) and TARGET_RANK (1). With ``MPI.COMM_SELF.Spawn`` it is the spawn intercommunicator;
  under ``mpiexec`` (driver first, workers after) it is built from COMM_WORLD.
- ``peers``: the workers' intracommunicator (draft 0, target 1); later the target may span more ranks.

Every message is a 1-D numpy array whose dtype is fixed by its tag (``TAG_DTYPES``); its length is the
message size. Layouts:

Driver -> each worker
  CONFIG       uint8    UTF-8 JSON of the WorldConfig (once, first message)
  CONTROL      int64    [OP_GENERATE, request_id, mode, gamma, max_tokens, top_k, seed, ignore_eos,
                         n_prompt, n_stops, prompt ids..., stop lengths..., stop ids...]
                        [OP_START, shared vocab size]  (once, after every worker is READY)
                        [OP_PROFILE, steps, max_tokens, batch_size]   [OP_SHUTDOWN]
  SAMPLING     float64  [temperature, top_p]            (right after an OP_GENERATE CONTROL)
  CANCEL       int64    [request_id]  (target only, any time; it ends that request after the current round
                        with finish_reason CANCELLED; a CANCEL for a request no longer served is dropped)
Worker -> driver
  READY        int64    [pid, vocab_size, max_seq_len, eos ids...]  (once, after loading the model)
  ERROR        uint8    UTF-8 message (instead of READY, or ending a request)
  TOKENS       int64    [request_id, finish_reason, ids...]  (target; finish_reason 0 = more follow)
  STATS        float64  STATS_FIELDS, in that order          (target; right after the last TOKENS)
  PROFILE      float64  [seconds of a forward over k new tokens, for k = 1..max_tokens]
Draft <-> target (peers), one DRAFT and one VERDICT per round, in lock step
  DRAFT        int64    [request_id, draft_forwards so far, new draft ids...]
  DRAFT_PROBS  float32  [n_new * vocab] the rows the draft sampled from (only when sampling)
  VERDICT      int64    [request_id, num_accepted, next_token (-1: none), finished]
"""
from __future__ import annotations

import numpy as np

from pearl.params import GenerationRequest, Mode, SamplingParams

DRAFT_RANK, TARGET_RANK = 0, 1
DRIVER_RANK = 0

CONFIG, CONTROL, SAMPLING, READY, ERROR, TOKENS, STATS, PROFILE, DRAFT, DRAFT_PROBS, VERDICT, CANCEL = range(1, 13)
TAG_DTYPES = {
    CONFIG: np.uint8, CONTROL: np.int64, SAMPLING: np.float64, READY: np.int64, ERROR: np.uint8,
    TOKENS: np.int64, STATS: np.float64, PROFILE: np.float64, DRAFT: np.int64, DRAFT_PROBS: np.float32,
    VERDICT: np.int64, CANCEL: np.int64,
}

OP_GENERATE, OP_PROFILE, OP_SHUTDOWN, OP_START = 1, 2, 3, 4

# What the target reports per request. Times are seconds measured on the target rank.
STATS_FIELDS = (
    "generated_tokens",  # output tokens
    "target_forwards",  # target model calls (a prefill counts as one)
    "draft_forwards",  # draft model calls
    "draft_tokens",  # draft tokens proposed
    "accepted_draft_tokens",  # draft tokens that became output
    "accepted_runs",  # runs of accepted tokens between rejections (PEARL's mean accepted length)
    "rounds",  # draft/verify exchanges (AR: decode steps)
    "target_forward_s",  # time inside target forwards
    "target_wait_s",  # time the target waited for the draft
    "target_busy_s",  # the whole request on the target, from receiving it to the last token
)


def text_message(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def message_text(message: np.ndarray) -> str:
    return message.tobytes().decode(errors="replace")


def encode_request(req: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
    s = req.sampling
    header = [OP_GENERATE, req.request_id, int(req.mode), req.gamma, s.max_tokens, s.top_k, s.seed,
              int(s.ignore_eos), len(req.prompt_ids), len(s.stop_token_ids)]
    stops = [len(stop) for stop in s.stop_token_ids] + [t for stop in s.stop_token_ids for t in stop]
    ints = np.array(header + list(req.prompt_ids) + stops, dtype=np.int64)
    return ints, np.array([s.temperature, s.top_p], dtype=np.float64)


def decode_request(ints: np.ndarray, floats: np.ndarray) -> GenerationRequest:
    (_, request_id, mode, gamma, max_tokens, top_k, seed, ignore_eos, n_prompt, n_stops) = ints[:10].tolist()
    rest = ints[10:].tolist()
    prompt, lengths, stop_ids = rest[:n_prompt], rest[n_prompt:n_prompt + n_stops], rest[n_prompt + n_stops:]
    stops, start = [], 0
    for length in lengths:
        stops.append(tuple(stop_ids[start:start + length]))
        start += length
    sampling = SamplingParams(temperature=float(floats[0]), top_p=float(floats[1]), top_k=top_k, seed=seed,
                              max_tokens=max_tokens, stop_token_ids=tuple(stops), ignore_eos=bool(ignore_eos))
    return GenerationRequest(request_id=request_id, prompt_ids=tuple(prompt), sampling=sampling,
                             mode=Mode(mode), gamma=gamma)
