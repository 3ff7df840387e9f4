"""How long a sequence's draft window is, round by round: from the acceptance its draft has had so far and the
pair's measured costs, the window with the most expected tokens per second, or none at all when the target
decoding alone (on the cores the draft would have used too) is faster.

Costs (``SpeculationCosts``, from the build's profile, one ``CostRow`` per profiled batch size):
  draft_step_s         one draft decode step of the batch
  verify_s[k-1]        one target forward over k new tokens per sequence (its threads while the draft runs)
  alone_step_s         one target decode step with no draft running (``target_alone_threads``)
  alone_verify_s[k-1]  one target forward over k new tokens on ``target_alone_threads`` (an SD round's verify:
                       the draft idles meanwhile)
  sd_draft_step_s      one draft step on ``target_alone_threads`` (an SD round's: the target waits, so the draft
                       takes the pair's cores); None (a profile from before it was measured): draft_step_s
  draft_feed_s         the draft's seconds per token when it feeds many at once (catching up on a prompt, or on
                       the tokens the target decoded alone); 0 in a profile from before it was measured
  sd_draft_feed_s      the same on ``target_alone_threads`` (a catch-up in an SD round); None (a profile from
                       before it was measured): draft_feed_s

Expected tokens per second of a window k, for a per-token acceptance a:
- SD: a round drafts k tokens (the draft on the pair's threads: the target waits), then verifies them
  (k + 1 rows, the target on all its threads) and keeps 1 + a + ... + a^k tokens.
- PEARL alternates two kinds of round, drafting k tokens in both while the target verifies:
  pre-verify (after a rejection) checks the window's first token with a 1-token forward and always gains
  one token; post-verify checks the pending k - 1 tokens and the next window's first, k rows, and gains
  1 + a + ... + a^(k-1). A post round leads to a pre round when it rejects (1 - a^k), a pre round to a post
  round when it accepts (a). The rate is the stationary mix of the two: tokens over seconds, where a round
  takes max(k draft steps, its forward).
  The round's seconds are scaled by ``overlap`` (calibrated: what rounds took beyond their longer part).
- none: one token per ``alone_step_s``.
A window is the most the draft drafts: with ``draft_stop_confidence`` it stops after a token it is unsure of
(pearl.decoding.draft), and the acceptance estimate counts the tokens actually checked. A PEARL round lasts
as long as the verify beside the drafting, however few tokens the draft drafted, so its window is priced at
the length the draft is expected to draft (``StopEstimate``: how often this sequence's draft stopped).

An adaptive PEARL request picks each round's kind too: a PEARL round (the verify beside the drafting) or a
vanilla SD round (draft, then verify on every core), whichever the rate model says is faster. Where a verify
is flat (bandwidth-bound: a GPU) PEARL's overlap wins; where it is compute-bound and the draft cheap (a
2-core CPU with a llama.cpp draft) the target's verify on both cores can win. Switching is free: an SD round
checks the pending tokens a PEARL round left along with its new window (``SdStep``), and after an SD round
nothing is pending, the state a PEARL pre-verify round starts from.

The acceptance estimate forgets old evidence per checked token (``DECAY``), so a sequence that moves from
code to prose changes its window within a few dozen tokens. Every sequence starts drafting, whatever its
prior acceptance: its own acceptance is the evidence; unless the costs say that not even a draft that is
always right would beat the target alone (a draft that is slow next to its target: then no round drafts), or
that catching up costs more than drafting could win back (below). Where the target decodes faster alone than
beside the draft (``target_faster_alone``: a CPU whose cores the models split), the models take turns on the
prompt rather than sharing the cores (a compute-bound prefill beside the draft took 1.6x as long on 2 cores).
Where the draft feeds faster on the pair's cores (``catch_up_in_sd_round``), the opening is an SD round from
the first: the draft feeds the prompt and drafts its window on all the cores, then the target's prefill
verifies that window on all of them, its few rows riding on the prompt's compute-bound forward (a lone
prompt's round, then an SD round, paid one verify more: ~0.14 s of a 64-token HumanEval request's 4.5 s on
the default pair). The first tokens come later by the draft's feed and window (0.3-0.5 s for a 130-token
prompt there), one and the window's accepted ones at once. Where that catch-up would not pay (below), the
prompt runs alone. Where the draft feeds no faster on the pair's cores, the prompt's forward runs alone first
and the draft catches up in the next round, a PEARL one drafting a single token beside a 1-token verify (its
feed would outlast a longer window's wait). Elsewhere (a GPU each) the two prefills run at once and the draft
catches up beside the target's forward in PEARL rounds. A sequence that stopped drafting has no evidence coming
in: it drafts again after ``PROBE_AFTER_ROUNDS`` rounds, twice as many after each probe that does not pay (the
opening rounds are no probe: a request whose first two windows were unlucky looks again as soon as one that
stopped after paying). A probe is dear (the draft first catches up on every token it missed, in a round as at
the opening), so probes are rare.

Catching up is priced (``catch_up_pays``): where it costs time (an SD round's feed, or a PEARL round's feed
that outlasts the target's forward beside it, or that forward on fewer threads than alone), drafting opens, or
a probe looks again, only if what drafting would gain over the request's remaining tokens at the pair's prior
acceptance is more than that cost. The llama.cpp draft took 6.7 s on its core to feed a 494-token prompt: a
request for 48 more tokens never wins that back (it ran 0.88x the target alone), one for 500 may.

The profile times each model alone on a short context; serving, PEARL's two models run at once and share the
memory bandwidth of a CPU, contexts grow, and a VM's speed drifts. ``Calibration`` scales the profile by what
lone sequences' rounds actually took (observed over profiled, per kind of forward, and a PEARL round as a
whole; an SD round's wait for its window by difference, once a round), so the comparison between drafting
and decoding alone, and between PEARL and SD rounds, is made in today's costs.
"""
from __future__ import annotations

import collections
import functools
import statistics
from dataclasses import dataclass

import numpy as np

DECAY = 0.95  # per checked draft token: evidence ~20 tokens old weighs a third
PRIOR_TOKENS = 2.0  # the prior acceptance counts as this many checked tokens
PROBE_AFTER_ROUNDS = 32
MAX_PROBE_AFTER_ROUNDS = 256
MIN_DRAFTED_ROUNDS = 2  # a probe lasts at least this long
# The opening lasts a round longer: its first window starts at the answer's first token, which the draft gets
# wrong more often than the ones after it (a summary's first word). Two windows rejected at once there stopped a
# summarization request whose draft then matched 25 of 28 tokens, and it decoded alone for 26 rounds until its
# probe; a round more of drafting costs ~0.1 s where the draft is wrong throughout
MIN_OPENING_ROUNDS = 3


@dataclass(frozen=True)
class CostRow:
    draft_step_s: float
    verify_s: tuple[float, ...]
    alone_step_s: float
    alone_verify_s: tuple[float, ...] = ()  # () (a profile from before it was measured): see alone_verify
    sd_draft_step_s: float | None = None  # a draft step in an SD round (on every core); None: draft_step_s
    draft_feed_s: float = 0.0  # per token the draft catches up on; 0: unprofiled (catching up counts as free)
    sd_draft_feed_s: float | None = None  # the same in an SD round (on every core); None: draft_feed_s
    # a PEARL round's seconds over the longer of its two parts (the drafting, the verify beside it): 1 where
    # they overlap perfectly; only calibration sets it (a profile times each part, not a round)
    overlap: float = 1.0
    # an SD round's seconds beyond its draft steps and its verify: the window's two handoffs and the extra
    # token its first forward feeds (the last round's bonus). Once per round, not per step; only calibration
    # sets it (a profile times forwards, not rounds)
    sd_round_extra_s: float = 0.0

    def verify(self, tokens: int) -> float:
        """A forward over ``tokens`` new tokens per sequence (past the profiled ones: the longest profiled)."""
        return self.verify_s[min(tokens, len(self.verify_s)) - 1]

    def alone_verify(self, tokens: int) -> float:
        """The same forward on ``target_alone_threads``. Unprofiled: the drafting threads' verify, sped up as
        much as a decode step is."""
        if not self.alone_verify_s:
            return self.verify(tokens) * self.alone_step_s / self.verify_s[0]
        return self.alone_verify_s[min(tokens, len(self.alone_verify_s)) - 1]

    @property
    def sd_draft_step(self) -> float:
        return self.draft_step_s if self.sd_draft_step_s is None else self.sd_draft_step_s

    @property
    def sd_draft_feed(self) -> float:
        return self.draft_feed_s if self.sd_draft_feed_s is None else self.sd_draft_feed_s


@dataclass(frozen=True)
class SpeculationCosts:
    rows: dict[int, CostRow]  # by batch size
    prior_acceptance: float = 0.8

    @property
    def max_window(self) -> int:
        return min(len(row.verify_s) for row in self.rows.values())

    def at(self, batch_size: int) -> CostRow:
        """The row of the largest profiled batch size not above ``batch_size`` (the smallest one below all)."""
        sizes = [size for size in self.rows if size <= batch_size] or [min(self.rows)]
        return self.rows[max(sizes)]

    @classmethod
    def from_profile(cls, profile: dict, prior_acceptance: float) -> "SpeculationCosts":
        """From engine.json's ``profile`` (its ``by_batch_size`` table)."""
        rows = {}
        for size, row in profile["by_batch_size"].items():
            verify = tuple(row["target_verify_s"])
            rows[int(size)] = CostRow(row["draft_step_s"], verify, row.get("target_alone_step_s", verify[0]),
                                      tuple(row.get("target_alone_verify_s", ())), row.get("draft_alone_step_s"),
                                      # one sequence's catch-up
                                      profile.get("draft_feed_s", 0.0), profile.get("draft_alone_feed_s"))
        return cls(rows, prior_acceptance)

    def to_message(self) -> np.ndarray:
        """COSTS: [prior, K, n, (batch_size, draft_step_s, alone_step_s, draft_feed_s, sd_draft_step,
        sd_draft_feed, verify_s[:K], alone_verify[:K]) * n] (see ranks.protocol; sd_draft_step, sd_draft_feed
        and alone_verify as ``CostRow`` gives them, profiled or not)."""
        k = self.max_window
        values = [self.prior_acceptance, k, len(self.rows)]
        for size, row in sorted(self.rows.items()):
            values += [size, row.draft_step_s, row.alone_step_s, row.draft_feed_s, row.sd_draft_step,
                       row.sd_draft_feed, *row.verify_s[:k], *(row.alone_verify(tokens) for tokens in range(1, k + 1))]
        return np.array(values, dtype=np.float64)

    @classmethod
    def from_message(cls, message: np.ndarray) -> "SpeculationCosts":
        prior, k, n = float(message[0]), int(message[1]), int(message[2])
        rows, width = {}, 6 + 2 * k
        for i in range(n):
            values = message[3 + i * width:3 + (i + 1) * width].tolist()
            rows[int(values[0])] = CostRow(values[1], tuple(values[6:6 + k]), values[2], tuple(values[6 + k:]),
                                           values[4], values[3], values[5])
        return cls(rows, prior)


def sd_tokens_per_s(k: int, a: float, row: CostRow) -> float:
    tokens = sum(a ** i for i in range(k + 1))
    return tokens / (max(k * row.sd_draft_step + row.sd_round_extra_s, 0.0) + row.alone_verify(k + 1))


def _pearl_round(k: int, a: float, row: CostRow) -> tuple[float, float, float]:
    """(a pre-verify round's seconds, the tokens and the seconds of a round of the stationary mix)."""
    drafting = k * row.draft_step_s
    pre_s, post_s = (max(drafting, row.verify(tokens)) * row.overlap for tokens in (1, k))
    post_tokens = sum(a ** i for i in range(k))
    to_pre, to_post = 1 - a ** k, a  # a post round that rejects; a pre round that accepts
    pre_share = to_pre / (to_pre + to_post) if to_pre + to_post > 0 else 0.0
    return pre_s, pre_share + (1 - pre_share) * post_tokens, pre_share * pre_s + (1 - pre_share) * post_s


def pearl_tokens_per_s(k: int, a: float, row: CostRow) -> float:
    _, tokens, seconds = _pearl_round(k, a, row)
    return tokens / seconds


def pearl_after_sd_tokens_per_s(k: int, a: float, row: CostRow) -> float:
    """PEARL rounds right after an SD round, which leaves nothing pending: the first is a pre-verify round (one
    token) beyond the stationary mix, priced over the rounds expected before the next rejection (1 / (1 -
    a^k)). Two kinds of about the same rate then do not alternate (on the 2-core CPU each return to PEARL paid
    a round for one token); where PEARL clearly leads (a GPU each) the one round hardly counts."""
    pre_s, tokens, seconds = _pearl_round(k, a, row)
    rounds = 1 / max(1 - a ** k, 1e-6)
    return (1 + rounds * tokens) / (pre_s + rounds * seconds)


RATES = {"sd": sd_tokens_per_s, "pearl": pearl_tokens_per_s}


def drafted_length(window: int, stop: float) -> int:
    """The tokens a window of ``window`` drafts where the draft stops after each token with chance ``stop``
    (``draft_stop_confidence``; 0: the whole window), rounded: 1 + (1 - stop) + ... + (1 - stop)^(window - 1)."""
    if stop <= 0:
        return window
    return max(1, min(window, round((1 - (1 - stop) ** window) / stop)))


def best_window(mode: str, a: float, row: CostRow, max_window: int, after_sd: bool = False,
                stop: float = 0.0) -> tuple[int, float]:
    """(window, tokens/s) of the best window for a drafting ``mode`` ("sd" or "pearl"); ``after_sd``: the
    sequence's last round was an SD one (a PEARL round now starts with a pre-verify round); ``stop``: the
    chance the draft stops after a token (its windows end early).

    A PEARL window is priced at the length the draft drafts: its round lasts as long as the verify beside the
    drafting whatever the window, so a window that stops early gains fewer tokens for the same seconds (the
    default pair, HumanEval, acceptance estimate 0.98-0.99: PEARL rounds drafting 1-2 of a window of 6 beside
    a 185-216 ms verify on one core, 15 tokens/s against 26 for the SD rounds before them). An SD round's
    verify shrinks with the window: a stop there saves draft steps, priced as a whole window's."""
    rate = pearl_after_sd_tokens_per_s if after_sd and mode == "pearl" else RATES[mode]
    if mode == "sd":
        # an SD window of k verifies k + 1 rows: only windows whose verify the profile timed (and calibration
        # can correct). Priced at the longest profiled verify, 9-row verifies took 166-200 ms against 148 ms
        # profiled for 8 rows, uncalibrated, and the widest window won wherever the acceptance was high
        max_window = max(1, min(max_window, len(row.verify_s) - 1))
        stop = 0.0
    # of windows that draft alike, the longest: the draft's stop, not the window, ends it
    return max(((k, rate(drafted_length(k, stop), a, row)) for k in range(1, max_window + 1)),
               key=lambda pair: (pair[1], pair[0]))


def best_round(kinds: tuple[str, ...], a: float, row: CostRow, max_window: int, after_sd: bool = False,
               stop: float = 0.0) -> tuple[str, int, float]:
    """(kind, window, tokens/s) of the best round among ``kinds`` ("pearl", "sd")."""
    return max(((kind, *best_window(kind, a, row, max_window, after_sd, stop)) for kind in kinds),
               key=lambda best: best[2])


# the kinds of round an adaptive request of each mode may run
ROUND_KINDS = {"pearl": ("pearl", "sd"), "sd": ("sd",)}


@functools.lru_cache(maxsize=64)
def drafting_can_pay(kinds: tuple[str, ...], row: CostRow, max_window: int) -> bool:
    """Whether a draft that is always right would beat the target alone under these costs (a property of the
    profile's row: computed once per row, not every round)."""
    return best_round(kinds, 1.0, row, max_window)[2] >= 1 / row.alone_step_s


def catch_up_pays(kinds: tuple[str, ...], acceptance: float, row: CostRow, max_window: int, remaining: int | None,
                  missed: int, kind: str = "pearl") -> bool:
    """Whether drafting the ``remaining`` tokens at ``acceptance`` would gain more than the first drafted round
    costs beyond its usual cost, where the draft first feeds the ``missed`` tokens: in an SD round (``kind``)
    the feed on every core; in a PEARL round the feed and a draft step beside the target's 1-token verify,
    beyond a step alone. A catch-up that costs nothing (a GPU each, the draft's feed hidden behind the verify)
    is always worth a look; ``remaining`` None: unbounded."""
    if kind == "sd":
        catch_up_s = missed * row.sd_draft_feed
    else:
        catch_up_s = max(missed * row.draft_feed_s + row.draft_step_s, row.verify(1)) - row.alone_step_s
    if remaining is None or catch_up_s <= 0:
        return True
    gain_per_token = row.alone_step_s - 1 / best_round(kinds, acceptance, row, max_window)[2]
    return remaining * gain_per_token > catch_up_s


def catch_up_in_sd_round(row: CostRow) -> bool:
    """Whether a draft that missed tokens catches up faster in an SD round than beside the target: where the
    target steps faster alone (a CPU whose cores the models split) and the draft feeds faster on an SD round's
    threads (``target_alone_threads``: more cores than its own)."""
    return target_faster_alone(row) and row.sd_draft_feed < row.draft_feed_s


def target_faster_alone(row: CostRow) -> bool:
    """Whether the target steps faster with the draft idle (a CPU whose cores the models split) than beside
    it (a GPU each: the same)."""
    return row.alone_step_s < row.verify(1)


class AcceptanceEstimate:
    """A draft token's chance to be accepted, for one sequence: accepted over checked-until-rejection tokens,
    each older checked token weighing ``DECAY`` less; the prior counts as ``PRIOR_TOKENS`` checked tokens."""

    def __init__(self, prior: float) -> None:
        self.accepted, self.rejected = prior * PRIOR_TOKENS, (1 - prior) * PRIOR_TOKENS

    def observe(self, num_checked: int, num_accepted: int) -> None:
        """A round checked ``num_checked`` draft tokens and accepted the first ``num_accepted`` of them."""
        seen = num_accepted + (num_accepted < num_checked)  # tokens after a rejection were never checked
        fade = DECAY ** seen
        self.accepted = self.accepted * fade + num_accepted
        self.rejected = self.rejected * fade + (num_accepted < num_checked)

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)


class StopEstimate:
    """The chance a sequence's draft stops after a token (``draft_stop_confidence``: it was unsure of it), over
    the tokens after which its windows went on or stopped, each older one weighing ``DECAY`` less; 0 until a
    window stops. A window's last token says nothing where the window was drafted whole."""

    def __init__(self) -> None:
        self.stops, self.continues = 0.0, 0.0

    def observe(self, drafted: int, stopped: bool) -> None:
        """A window drafted ``drafted`` tokens, and ``stopped`` before its length (not at the request's end)."""
        fade = DECAY ** drafted
        self.stops = self.stops * fade + stopped
        self.continues = self.continues * fade + drafted - 1

    @property
    def rate(self) -> float:
        seen = self.stops + self.continues
        return self.stops / seen if seen else 0.0


class Calibration:
    """Observed over profiled seconds of each kind of forward (a PEARL round's "draft" steps and the target's
    "verify" beside them; a target step "alone"; an SD round's "sd_verify" on all the target's threads), the
    median of its last ``WINDOW`` observations. And a PEARL round as a whole ("overlap"): its seconds over the
    longer of its calibrated parts. The parts' ratios hide what a round pays beyond them: it lasts as long as
    the longer of two drifting parts (the mean of a maximum exceeds the maximum of the means), plus the
    window's handoff. Default pair, HumanEval, two threads: PEARL rounds took 1.05-1.35x the longer of their
    calibrated parts.

    A verify's ratio is kept per length (rows per sequence): one target may verify on two kernels. The int4
    target multiplies 5 rows or more on its bfloat16 copy and fewer on its int4 kernel; served, a 6-row
    verify took 1.37-1.45x its profile and a 4-row one ~1.05x. One ratio for both priced every window at the
    longer one's 1.4: drafting looked unpaid at an acceptance of 0.85 and the request decoded alone. A length
    not yet observed keeps its profile (``PRIOR``), so a window whose verify has not run is tried at the
    profile's price, and what it really costs then comes in.

    An SD round's wait for its window ("sd_draft") is calibrated by difference, not ratio: observed minus
    profiled seconds (``sd_round_extra_s``), once per round. What it pays beyond its draft steps is per round:
    two handoffs and the extra token its first forward feeds. Int4-target pair on the 2-core CPU: a window of 1
    kept the target waiting 36 ms, one of 3 76 ms, for a profiled step of 20 ms (16 ms a round, the steps as
    profiled). As a ratio that was 1.8x a step after rounds of window 1: a window of 3 was priced at 108 ms,
    drafting no longer paid at an acceptance of 0.86, and with no drafted rounds nothing corrected it.

    A median, not a mean: a round now and then takes many times its usual seconds (a process's first verify
    of 5 tokens took 3x its profile, its first SD draft steps 2.3x; one SD round's draft wait took 79x with a
    compiler running beside the ranks), and one such round must not swing the costs. It would swing them for
    good: the kind of round it made look slow is no longer chosen, so nothing observed corrects it. The
    profile's own ratio, 1, counts as ``PRIOR`` observations until real ones push it out; a kind of forward
    whose cost has really moved says so within a few rounds."""

    WINDOW = 7
    PRIOR = 3
    KINDS = ("draft", "alone", "overlap")  # ratios; the profile's own is 1
    PER_LENGTH = ("verify", "sd_verify")  # ratios, one per verify length
    DIFFERENCES = ("sd_draft",)  # observed minus profiled seconds; the profile's own is 0
    ALL_KINDS = KINDS + PER_LENGTH + DIFFERENCES

    def __init__(self) -> None:
        # (kind, rows or None) -> its last observations; made by the first one (until then: the profile's)
        self.observed: dict[tuple[str, int | None], collections.deque] = {}

    def observe(self, kind: str, observed_s: float, profiled_s: float, rows: int | None = None) -> None:
        """A forward of ``kind`` (of ``rows`` per sequence for the ``PER_LENGTH`` kinds) took ``observed_s``
        where the profile says ``profiled_s``."""
        if (rows is not None) != (kind in self.PER_LENGTH):
            raise ValueError(f"{kind}: rows {'are needed' if rows is None else 'do not apply'}")
        if observed_s > 0 and profiled_s > 0:
            values = self.observed.get((kind, rows))
            if values is None:
                values = self.observed[kind, rows] = collections.deque([self._profiles(kind)] * self.PRIOR,
                                                                       maxlen=self.WINDOW)
            values.append(observed_s - profiled_s if kind in self.DIFFERENCES else observed_s / profiled_s)

    def ratio(self, kind: str, rows: int | None = None) -> float:
        """The kind's median (of its ``rows`` for the ``PER_LENGTH`` kinds): a ratio, or for ``DIFFERENCES``
        seconds; the profile's own where nothing was observed."""
        values = self.observed.get((kind, rows))
        return self._profiles(kind) if values is None else statistics.median(values)

    def _profiles(self, kind: str) -> float:
        """What the profile itself counts as for ``kind``: ratio 1, or a difference of 0 seconds."""
        if kind not in self.ALL_KINDS:
            raise ValueError(f"no kind of forward {kind!r} is calibrated")
        return 0.0 if kind in self.DIFFERENCES else 1.0

    def apply(self, row: CostRow) -> CostRow:
        lengths = range(1, len(row.verify_s) + 1)
        verify = tuple(row.verify(k) * self.ratio("verify", k) for k in lengths)
        alone_verify = tuple(row.alone_verify(k) * self.ratio("sd_verify", k) for k in lengths)
        return CostRow(row.draft_step_s * self.ratio("draft"), verify, row.alone_step_s * self.ratio("alone"),
                       alone_verify, row.sd_draft_step, row.draft_feed_s, row.sd_draft_feed_s,
                       row.overlap * self.ratio("overlap"), row.sd_round_extra_s + self.ratio("sd_draft"))


class WindowPolicy:
    """One sequence's window each round (0: the target decodes alone this round), and the kind of round it
    drafts in (``kind``: "pearl" or "sd", among its mode's ``ROUND_KINDS``)."""

    def __init__(self, mode: str, prior_acceptance: float, max_window: int) -> None:
        self.kinds, self.max_window, self.prior = ROUND_KINDS[mode], max_window, prior_acceptance
        self.kind = self.kinds[0]
        self.acceptance = AcceptanceEstimate(prior_acceptance)
        self.stops = StopEstimate()
        self.window = 0
        self.drafted_rounds = 0  # rounds drafted since it last started drafting
        self.probe_after = PROBE_AFTER_ROUNDS
        self.alone_rounds = self.probe_after  # rounds decoded alone since it last stopped: a probe first
        self.probing = False  # drafting only to look at the acceptance again, and it has not paid yet
        self.opened = False  # the opening rounds are not a probe: two unlucky rounds must not delay the next look
        # rounds this stretch of drafting lasts before it may stop: the opening's MIN_OPENING_ROUNDS, then
        # MIN_DRAFTED_ROUNDS (set as each stretch starts)
        self.min_drafted_rounds = MIN_DRAFTED_ROUNDS
        self.prefilled = False  # the prompt's round is behind it

    def observe(self, num_checked: int, num_accepted: int) -> None:
        if num_checked:
            self.acceptance.observe(num_checked, num_accepted)

    def observe_window(self, drafted: int, planned: int) -> None:
        """A round's window drafted ``drafted`` of the ``planned`` tokens (fewer: the draft stopped)."""
        self.stops.observe(drafted, drafted < planned)

    def next_window(self, row: CostRow, profiled: CostRow | None = None, remaining: int | None = None,
                    missed: int = 0) -> int:
        """The window for the next round (and its ``kind``), given the costs of a round of the batch it is in
        (``row``: calibrated; ``profiled``: as the build measured them, ``row`` if not given), the tokens the
        request may still generate (``remaining``; None: unbounded) and the tokens the draft has not fed yet
        (``missed``: the prompt's, then those decoded alone)."""
        # Whether to draft at all, and whether a catch-up can be won back, are judged on the profile (both
        # models measured side by side): calibration moves only the kinds of forward that ran, and without
        # probes a one-sided calibration would never be corrected.
        profiled = profiled or row
        if not self.prefilled:
            self.prefilled = True
            if target_faster_alone(row) and not catch_up_in_sd_round(profiled):
                return 0  # the prompt's forward alone, on all the target's cores; the draft catches up next
            # else the opening below: an SD round's window verified by the prompt's forward (on a split CPU),
            # or PEARL rounds from the first (a GPU each)
        if not drafting_can_pay(self.kinds, profiled, self.max_window):
            self.window = 0  # no opening, no probe
            return 0
        # a switch from SD rounds to PEARL ones starts with a pre-verify round: priced in, so that two kinds of
        # about the same rate do not alternate (each return to PEARL paid a round for one token)
        after_sd = self.window > 0 and self.kind == "sd"
        self.kind, window, rate = best_round(self.kinds, self.acceptance.rate, row, self.max_window, after_sd,
                                             self.stops.rate)
        pays = rate >= 1 / row.alone_step_s
        if not self.window:
            # The draft first feeds every token it missed (at the opening, the prompt). On a split CPU that
            # feed beside the target's 1-token verify outlasts it: an SD round gives the feed every core, and
            # the target then verifies on every core. Elsewhere a PEARL round hides the feed behind the
            # target's forward (judged on the profile, as below: calibration moves only what ran).
            kind = "sd" if "pearl" not in self.kinds or catch_up_in_sd_round(profiled) else "pearl"
            # drafting pays, or it is time to look again; and what could be won back covers the catch-up
            if (pays or self.alone_rounds >= self.probe_after) and \
                    catch_up_pays(self.kinds, self.prior, profiled, self.max_window, remaining, missed, kind):
                self.min_drafted_rounds = MIN_DRAFTED_ROUNDS if self.opened else MIN_OPENING_ROUNDS
                self.probing, self.opened = self.opened and not pays, True
                self.kind, window = kind, best_window(kind, self.acceptance.rate, row, self.max_window,
                                                      stop=self.stops.rate)[0]
                if kind == "pearl" and target_faster_alone(row):
                    window = 1  # the feed beside a 1-token verify outlasts it: no window of steps on top
                self.window, self.drafted_rounds = window, 1
                return window
            self.alone_rounds += 1
            return 0
        if not pays and self.drafted_rounds >= self.min_drafted_rounds:
            # a probe that never paid: look again later; drafting that paid for a while: soon
            self.probe_after = min(2 * self.probe_after, MAX_PROBE_AFTER_ROUNDS) if self.probing \
                else PROBE_AFTER_ROUNDS
            self.window, self.alone_rounds = 0, 1
            return 0
        self.probing = self.probing and not pays
        self.drafted_rounds += 1
        self.window = window
        return window
