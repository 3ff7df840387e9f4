"""PEARL: the target verifies while the draft drafts (arXiv 2408.11850).

Every round the target runs ONE forward over its uncached tokens at the same time as the draft proposes
its next window, then checks ``pending + [first new draft token]``:
- pre-verify (nothing pending, after a correction): the forward is over the last verified token(s), its one
  row checks the draft's first new token early. Rejected: the target's correction follows and the draft's
  window is dropped. Accepted: the whole window is kept; its first token is verified, the rest pending.
- post-verify (a window pending): the forward is over the pending window, its rows check the window and
  the next window's first token while the draft keeps drafting. All accepted: the new window is kept and
  the draft length keeps growing by itself. A rejection at position n keeps the n accepted tokens and the
  correction; both ranks roll back their caches; the next round is pre-verify again.
The row count works out because the first token of a pending window is always verified but uncached on
the target: the uncached tokens are exactly one more than the pending ones.
"""
from __future__ import annotations

import torch

from pearl.decoding.target import TargetState
from pearl.sampling import Verdict, verify


class PearlStep:
    """The target's side of PEARL for one sequence."""

    uses_draft = True
    waits_for_draft = False

    def __init__(self) -> None:
        self.checks: list[int] = []

    def rows_before_draft(self, state: TargetState) -> int:
        self.checks = state.seq.pending  # taken before this round's window is appended
        return len(self.checks) + 1  # overlaps with the draft proposing its next window

    def rows_after_draft(self, state: TargetState) -> int:
        return 0

    def decide(self, state: TargetState, logits: torch.Tensor) -> tuple[Verdict, int]:
        draft = state.draft
        checks = self.checks + draft.tokens[:1]
        q = None if draft.probs is None else state.probs_of_pending(draft.probs[:1])
        verdict = verify(logits, checks, q, state.params, state.draws, state.seq.num_verified)
        if draft.probs is not None:
            state.pending_probs = None if verdict.corrected else draft.probs[1:]
        return verdict, len(checks)
