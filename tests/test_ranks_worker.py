"""A worker rank's handling of the driver's messages at a round boundary (pearl.ranks.worker)."""
import pytest

from pearl.ranks import worker as worker_module
from pearl.ranks.protocol import DRAFT_RANK, TARGET_RANK
from pearl.ranks.worker import DRAIN_QUIET_S, Worker


class TrickleDriver:
    """The driver's endpoint with one message sent, which a probe shows only from the ``shows_at``-th on (MPICH
    reads what arrived during a long forward a little per probe)."""

    def __init__(self, shows_at: int) -> None:
        self.probes, self.shows_at, self.queued = 0, shows_at, 1

    def has(self, source: int) -> bool:
        self.probes += 1
        return self.queued > 0 and self.probes >= self.shows_at


class Clock:
    """time.monotonic and time.sleep for the worker: sleeping moves the clock, nothing else does."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def handled_at_a_boundary(rank: int, shows_at: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many driver messages the ``rank`` leader handles at one round boundary."""
    monkeypatch.setattr(worker_module, "time", Clock())
    worker = Worker.__new__(Worker)  # no world: only its driver endpoint is used here
    worker.driver = TrickleDriver(shows_at)
    handled = []

    def handle() -> None:
        handled.append(worker.driver.queued)
        worker.driver.queued -= 1

    worker.handle_driver_message = handle
    worker.drain_driver(DRAIN_QUIET_S[rank])
    return len(handled)


def test_the_target_drains_until_quiet_and_the_draft_takes_what_has_arrived(monkeypatch):
    """The target admits what arrived: it probes on until the driver is quiet, so a request a first probe did not
    show joins this round. The draft admits what the target's PLAN names (waiting for a request not here yet),
    so it handles what has arrived and drafts: in an SD round the target is waiting for its window."""
    assert handled_at_a_boundary(TARGET_RANK, shows_at=3, monkeypatch=monkeypatch) == 1
    assert handled_at_a_boundary(DRAFT_RANK, shows_at=1, monkeypatch=monkeypatch) == 1
    assert handled_at_a_boundary(DRAFT_RANK, shows_at=3, monkeypatch=monkeypatch) == 0
