"""The message protocol between the driver (the process that owns the LLM) and the worker ranks.

Communicators
- ``driver``: an intercommunicator. The driver is rank 0 of its side; the workers are remote ranks
  DRAFT_RANK (0) and TARGET_RANK (1). With ``MPI.COMM_SELF.Spawn`` it is the spawn intercommunicator;
  under ``mpiexec`` (driver first, workers after) it is built from COMM_WORLD.
- ``peers``: the workers' intracommunicator (draft 0, target 1). A tensor-parallel model's other shards are
  workers 2 .. (``pearl.ranks.roles``): they get CONFIG and OP_SHUTDOWN only, answer READY or ERROR, and take
  no part in the messages below.

Every message is a 1-D numpy array whose dtype is fixed by its tag (``TAG_DTYPES``); its length is the
message size. Layouts:

Driver -> each worker
  CONFIG       uint8    UTF-8 JSON of the WorldConfig (once, first message)
  CONTROL      int64    [OP_GENERATE, request_id, mode, gamma, max_tokens, top_k, seed, ignore_eos,
                         num_generated, n_prompt, n_stops, prompt ids..., stop lengths..., stop ids...]
                        (to the target, and to the draft unless mode is AR: the draft never hears of those;
                        gamma 0: adaptive, the target picks each round's window, see pearl.speculation)
                        [OP_START, shared vocab size]  (once, after every worker is READY)
                        [OP_PROFILE, steps, max_tokens, batch_size, threads (0: the rank's own), feed]
                        (feed 1: one forward over max_tokens that wants the last token's logits only, a
                        catch-up; 0: k = 1..max_tokens, k rows each)   [OP_SHUTDOWN]
  COSTS        float64  SpeculationCosts.to_message(): the pair's measured costs, what adaptive requests'
                        windows are chosen from (target only; before the first adaptive request)
  SAMPLING     float64  [temperature, top_p]            (right after an OP_GENERATE CONTROL)
  CANCEL       int64    [request_id]  (target only, any time; it ends that request after the current round
                        with finish_reason CANCELLED; a CANCEL for a request no longer served is dropped)
Worker -> driver
  READY        int64    [pid, vocab_size, max_seq_len, eos ids...]  (once, after loading the model)
  ERROR        uint8    UTF-8 message (instead of READY; or a rank failed while serving: the world is broken,
                        every request in flight fails and the world must be restarted)
  TOKENS       int64    [request_id, finish_reason, ids...]  (target; finish_reason 0 = more follow)
  STATS        float64  [request_id, STATS_FIELDS..., acceptance histogram...]  (target; right after EVERY
                        TOKENS: the request's counters so far, pearl.schema.COUNTERS, then its histogram, at least
                        one entry, pearl.schema.ACCEPTANCE_HISTOGRAM; after the last TOKENS its totals. Running
                        totals let a request resumed in a new world count what the dead one did)
  PROFILE      float64  [seconds of a forward over k new tokens, for each k OP_PROFILE asked for]
Draft <-> target (peers): continuous batching, one PLAN and one DRAFT per round, in lock step
  PLAN         int64    target -> draft at each round boundary (only when there is something to say):
                        [n_verdicts, draft_threads, (request_id, num_accepted, next_token (-1: none), finished,
                         window) * n_verdicts, (request_id, window) of each request that joins the batch now...]
                        draft_threads: the draft's torch threads for the round's drafting, threads_per_rank, or
                        the pair's cores (target_alone_threads) where every sequence's round is a vanilla SD
                        one (the target waits for the windows and computes nothing meanwhile).
                        It carries the verdict of every sequence the draft holds for the round just verified
                        (finished ones leave the batch; a request cancelled before it joined appears once,
                        finished) and the requests admitted for the next round, with each one's draft window
                        for the next round. Window 0: the sequence does not draft this round (the target
                        decodes it alone); the draft first drops its pending tokens, as the target does, and
                        keeps applying its verdicts (the target's tokens) until a window > 0 comes. The target
                        admits requests (at most the world's max_batch_size at once), so both ranks always
                        agree on the batch.
  DRAFT        int64    draft -> target, when a sequence of its batch has a window > 0 after a PLAN:
                        [n_seqs, microseconds the round's drafting took,
                         (request_id, draft_forwards so far, n_new) * n_seqs, new draft ids...]
                        n_new is at most the PLAN's window (adaptive requests: fewer where the draft stopped
                        at a token it was unsure of, WorldConfig.draft_stop_confidence), and at least 1
  DRAFT_PROBS  float32  right after a DRAFT that has sampling sequences: their rows [n_new * vocab] in order
"""
from __future__ import annotations

import numpy as np

from pearl.params import GenerationRequest, Mode, SamplingParams
from pearl.schema import COUNTER_NAMES
from pearl.sampling import Verdict

DRAFT_RANK, TARGET_RANK = 0, 1
DRIVER_RANK = 0

(CONFIG, CONTROL, SAMPLING, READY, ERROR, TOKENS, STATS, PROFILE, DRAFT, DRAFT_PROBS, PLAN, CANCEL,
 COSTS) = range(1, 14)
TAG_DTYPES = {
    CONFIG: np.uint8, CONTROL: np.int64, SAMPLING: np.float64, READY: np.int64, ERROR: np.uint8,
    TOKENS: np.int64, STATS: np.float64, PROFILE: np.float64, DRAFT: np.int64, DRAFT_PROBS: np.float32,
    PLAN: np.int64, CANCEL: np.int64, COSTS: np.float64,
}

OP_GENERATE, OP_PROFILE, OP_SHUTDOWN, OP_START = 1, 2, 3, 4

STATS_FIELDS = COUNTER_NAMES  # what the target reports per request (pearl.schema.COUNTERS)


def text_message(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def message_text(message: np.ndarray) -> str:
    return message.tobytes().decode(errors="replace")


def encode_request(req: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
    s = req.sampling
    header = [OP_GENERATE, req.request_id, int(req.mode), req.gamma or 0, s.max_tokens, s.top_k, s.seed,
              int(s.ignore_eos), req.num_generated, len(req.prompt_ids), len(s.stop_token_ids)]
    stops = [len(stop) for stop in s.stop_token_ids] + [t for stop in s.stop_token_ids for t in stop]
    ints = np.array(header + list(req.prompt_ids) + stops, dtype=np.int64)
    return ints, np.array([s.temperature, s.top_p], dtype=np.float64)


def decode_request(ints: np.ndarray, floats: np.ndarray) -> GenerationRequest:
    (_, request_id, mode, gamma, max_tokens, top_k, seed, ignore_eos, num_generated, n_prompt,
     n_stops) = ints[:11].tolist()
    rest = ints[11:].tolist()
    prompt, lengths, stop_ids = rest[:n_prompt], rest[n_prompt:n_prompt + n_stops], rest[n_prompt + n_stops:]
    stops, start = [], 0
    for length in lengths:
        stops.append(tuple(stop_ids[start:start + length]))
        start += length
    sampling = SamplingParams(temperature=float(floats[0]), top_p=float(floats[1]), top_k=top_k, seed=seed,
                              max_tokens=max_tokens, stop_token_ids=tuple(stops), ignore_eos=bool(ignore_eos))
    return GenerationRequest(request_id=request_id, prompt_ids=tuple(prompt), sampling=sampling,
                             mode=Mode(mode), gamma=gamma or None, num_generated=num_generated)


class ProtocolError(RuntimeError):
    """A message that does not fit the batch its receiver holds."""


# PLAN: the verdicts of a round, by request id: (verdict, finished, next round's window)
Verdicts = dict[int, tuple[Verdict, bool, int]]
Joins = dict[int, int]  # request id -> its first window


def encode_plan(verdicts: Verdicts, joins: Joins, draft_threads: int) -> np.ndarray:
    entries = [value for request_id, (verdict, finished, window) in verdicts.items()
               for value in (request_id, verdict.num_accepted, verdict.next_token, int(finished), window)]
    return np.array([len(verdicts), draft_threads, *entries, *(v for item in joins.items() for v in item)],
                    dtype=np.int64)


def decode_plan(message: np.ndarray) -> tuple[Verdicts, Joins, int]:
    """(verdicts, joins, the draft's threads for the round's drafting)."""
    values = message.tolist()
    count, draft_threads = values[0], values[1]
    entries, joins = values[2:2 + 5 * count], values[2 + 5 * count:]
    verdicts = {entries[i]: (Verdict(entries[i + 1], entries[i + 2]), bool(entries[i + 3]), entries[i + 4])
                for i in range(0, len(entries), 5)}
    return verdicts, dict(zip(joins[0::2], joins[1::2])), draft_threads


def encode_drafts(seconds: float, windows: list[tuple[int, int, list[int]]]) -> np.ndarray:
    """DRAFT from the round's drafting time and (request_id, draft_forwards, tokens) per sequence."""
    header = [value for request_id, forwards, tokens in windows for value in (request_id, forwards, len(tokens))]
    return np.array([len(windows), round(seconds * 1e6), *header, *(t for _, _, tokens in windows for t in tokens)],
                    dtype=np.int64)


def decode_drafts(message: np.ndarray) -> tuple[float, list[tuple[int, int, list[int]]]]:
    values = message.tolist()
    count, seconds = values[0], values[1] / 1e6
    header, tokens = values[2:2 + 3 * count], values[2 + 3 * count:]
    windows, start = [], 0
    for i in range(0, len(header), 3):
        request_id, forwards, length = header[i:i + 3]
        windows.append((request_id, forwards, tokens[start:start + length]))
        start += length
    return seconds, windows
