"""The three decoders (ar, sd, pearl), each split into the draft rank's and the target rank's side, over a
batch of sequences: ``draft_round`` drafts every active sequence's window, ``target_round`` verifies them."""
from __future__ import annotations

from pearl.backends.base import ModelBackend
from pearl.decoding.ar import ArStep
from pearl.decoding.common import Draft, RankState
from pearl.decoding.draft import draft_round
from pearl.decoding.pearl import PearlStep
from pearl.decoding.sd import SdStep
from pearl.decoding.target import TargetState, target_round
from pearl.params import GenerationRequest, Mode
from pearl.sampling import DRAFT_STREAM, TARGET_STREAM

STEPS = {Mode.AR: ArStep, Mode.SD: SdStep, Mode.PEARL: PearlStep}


def target_state(request: GenerationRequest, backend: ModelBackend, vocab_size: int) -> TargetState:
    return TargetState(request, backend, vocab_size, TARGET_STREAM, step=STEPS[request.mode]())


def draft_state(request: GenerationRequest, backend: ModelBackend, vocab_size: int) -> RankState:
    return RankState(request, backend, vocab_size, DRAFT_STREAM)


__all__ = ["Draft", "RankState", "TargetState", "draft_round", "draft_state", "target_round", "target_state"]
