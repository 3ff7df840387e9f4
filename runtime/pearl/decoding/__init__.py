"""The three decoders (ar, sd, pearl), each split into the draft rank's and the target rank's side, over a
batch of sequences: ``draft_round`` drafts every active sequence's window, ``target_round`` verifies them."""
from __future__ import annotations

from pearl.backends.base import ModelBackend
from pearl.decoding.ar import ArStep
from pearl.decoding.common import Draft, RankState
from pearl.decoding.draft import draft_round
from pearl.decoding.pearl import PearlStep
from pearl.decoding.sd import SdStep
from pearl.decoding.target import RoundThreads, TargetState, round_threads, target_round
from pearl.params import GenerationRequest, Mode
from pearl.sampling import DRAFT_STREAM, TARGET_STREAM
from pearl.speculation import WindowPolicy

STEPS = {Mode.AR: ArStep, Mode.SD: SdStep, Mode.PEARL: PearlStep}


def target_state(request: GenerationRequest, backend: ModelBackend, vocab_size: int,
                 policy: WindowPolicy | None = None) -> TargetState:
    """A request's state on the target; it decodes alone (``ArStep``) until ``set_window`` gives it a window."""
    return TargetState(request, backend, vocab_size, TARGET_STREAM, step=ArStep(), policy=policy)


def set_window(state: TargetState, window: int, kind: Mode | None = None) -> None:
    """The target's side of ``RankState.set_window``: the sequence's decoder step follows (``kind``'s while it
    drafts: an adaptive PEARL request's policy picks PEARL or SD rounds, others their mode's; ``ArStep`` while
    it does not)."""
    step = STEPS[kind or state.request.mode] if window else ArStep
    if type(state.step) is not step:
        state.step = step()
    if not window:
        state.pending_probs = None  # its tokens are dropped
    state.set_window(window)


def draft_state(request: GenerationRequest, backend: ModelBackend, vocab_size: int, window: int) -> RankState:
    state = RankState(request, backend, vocab_size, DRAFT_STREAM)
    state.set_window(window)
    return state


__all__ = ["Draft", "RankState", "RoundThreads", "TargetState", "draft_round", "draft_state", "round_threads",
           "set_window", "target_round", "target_state"]
