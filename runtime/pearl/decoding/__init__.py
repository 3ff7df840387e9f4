"""The three decoders (ar, sd, pearl), each split into the draft rank's and the target rank's side."""
from __future__ import annotations

import numpy as np

from pearl.decoding.ar import ar_step
from pearl.decoding.common import DraftLink, RankState, TargetLink
from pearl.decoding.draft import serve_draft
from pearl.decoding.pearl import PearlStep
from pearl.decoding.sd import sd_step
from pearl.decoding.target import TargetState, serve_target
from pearl.params import Mode


def run_target(state: TargetState, link: TargetLink) -> np.ndarray:
    mode = state.request.mode
    step = {Mode.AR: ar_step, Mode.SD: sd_step, Mode.PEARL: PearlStep()}[mode]
    return serve_target(state, link, step, uses_draft=mode is not Mode.AR)


def run_draft(state: RankState, link: DraftLink) -> None:
    if state.request.mode is not Mode.AR:
        serve_draft(state, link)


__all__ = ["RankState", "TargetState", "run_draft", "run_target"]
