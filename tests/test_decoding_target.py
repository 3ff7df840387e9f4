"""The ranks' threads per round: the target's all the cores unless the draft computes beside it; the draft's
all the cores where the target waits for its windows (vanilla SD rounds only)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from pearl.decoding import round_threads
from pearl.decoding.ar import ArStep
from pearl.decoding.pearl import PearlStep
from pearl.decoding.sd import SdStep


@pytest.mark.parametrize("steps, threads", [
    ([ArStep], 2),  # no draft at all
    ([SdStep], 2),  # SD: the draft drafts, then idles while the target verifies
    ([SdStep, SdStep], 2),
    ([PearlStep], 1),  # PEARL: the target verifies while the draft drafts the next window
    ([SdStep, PearlStep], 1),
    ([SdStep, ArStep], 1),  # the AR sequence decodes while the SD one's window is drafted
    ([ArStep, ArStep], 2),
])
def test_the_target_takes_the_drafts_cores_only_when_the_draft_idles(steps, threads):
    states = [SimpleNamespace(step=step()) for step in steps]
    assert round_threads(states, drafting_threads=1, alone_threads=2).target == threads


@pytest.mark.parametrize("steps, threads", [
    ([SdStep], 2),  # the target waits for the window: the draft takes its cores
    ([SdStep, SdStep], 2),
    ([PearlStep], 1),  # the target verifies beside the drafting
    ([SdStep, PearlStep], 1),
    ([SdStep, ArStep], 1),  # the AR sequence decodes while the SD one's window is drafted
    ([ArStep], 1),  # nothing drafts: the draft keeps its own
])
def test_the_draft_takes_the_targets_cores_only_when_the_target_waits(steps, threads):
    states = [SimpleNamespace(step=step()) for step in steps]
    assert round_threads(states, drafting_threads=1, alone_threads=2).draft == threads
