"""One request's token state on one rank: its tokens, how many are verified, how many are in the KV cache.

Invariants (each rank keeps its own Sequence; both apply the same verdicts, so they agree on
``tokens[:num_verified]``):
- ``tokens[:num_prompt]`` is the prompt; ``tokens[:num_verified]`` is final (prompt + accepted output);
  ``tokens[num_verified:]`` are draft tokens waiting for the target's check ("pending").
- ``tokens[:num_cached]`` are in this rank's KV cache. Only the backend changes ``num_cached``
  (``forward`` raises it to ``len(tokens)``, ``truncate`` lowers it), so the sequence and its cache
  never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pearl.sampling import Verdict


@dataclass
class Sequence:
    request_id: int
    tokens: list[int]
    num_prompt: int = field(init=False)
    num_verified: int = field(init=False)
    num_cached: int = 0

    def __post_init__(self) -> None:
        self.tokens = list(self.tokens)
        self.num_prompt = self.num_verified = len(self.tokens)

    @property
    def pending(self) -> list[int]:
        return self.tokens[self.num_verified:]

    @property
    def num_uncached(self) -> int:
        return len(self.tokens) - self.num_cached

    def apply_verdict(self, verdict: Verdict) -> int:
        """Apply the target's decision on the checks starting at ``tokens[num_verified]``.

        Returns how many leading tokens are still valid; a KV cache holding more must be truncated to it.
        With a next token (correction or SD bonus), everything after the accepted tokens is dropped and the
        next token is appended, verified but not yet cached by anyone. Without one (PEARL, all accepted),
        the later draft tokens stay pending.
        """
        accepted_end = self.num_verified + verdict.num_accepted
        if not 0 <= verdict.num_accepted <= len(self.tokens) - self.num_verified:
            raise ValueError(f"verdict accepts {verdict.num_accepted} tokens, only "
                             f"{len(self.tokens) - self.num_verified} are pending")
        if verdict.corrected:
            del self.tokens[accepted_end:]
            self.tokens.append(verdict.next_token)
            self.num_verified = len(self.tokens)
            return accepted_end
        self.num_verified = accepted_end
        return len(self.tokens)

    def drop_pending(self) -> int:
        """Forget the draft tokens not yet checked; returns how many leading tokens a KV cache may keep so
        that the last verified token is still uncached (the next forward takes its logits row from it)."""
        del self.tokens[self.num_verified:]
        return min(self.num_cached, self.num_verified - 1)

    def num_to_draft(self, gamma: int, max_total: int) -> int:
        """Draft length for this round: gamma, cut so the sequence stays within max_total tokens.

        At least one token is always drafted: PEARL verifies the next window's first token in the same
        target forward, and a verified token is always gained per round, so this terminates.
        """
        return max(1, min(gamma, max_total - 1 - len(self.tokens)))
