"""Many threads, one world: ``LLM.generate`` may be called from any thread, so one receiver thread polls the
world and routes each report to the queue of its request; a rank's failure ends every request in flight.

(The world host needs none of this: its event loop polls the world itself, ``pearl.serving.world_host``.)
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

from pearl.params import GenerationRequest
from pearl.ranks.world import Report, World, WorldError

POLL_TIMEOUT_S = 0.1  # how soon the receiver notices that it must stop


class Router:
    def __init__(self, world: World) -> None:
        self.world = world
        self._requests: dict[int, queue.Queue[Report | Exception]] = {}  # in flight
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._receive, name="pearl-world-receiver", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Iterator[Report]:
        """Send the request; iterate its reports up to the last (raises WorldError if the world fails)."""
        reports: queue.Queue[Report | Exception] = queue.Queue()
        with self._lock:  # the receiver ends the requests under this lock when the world fails
            if not self._running:
                raise WorldError(f"the worker ranks failed earlier and must be restarted: {self.world.failure}"
                                 if self.world.failure else "the worker ranks are shut down (the LLM is closed)")
            self.world.submit(request)
            self._requests[request.request_id] = reports
        return self._reports(reports)

    @staticmethod
    def _reports(reports: queue.Queue[Report | Exception]) -> Iterator[Report]:
        while True:
            report = reports.get()
            if isinstance(report, Exception):
                raise report
            yield report
            if report.finished:
                return

    def close(self) -> None:
        """Stop receiving (before the world closes) and end the requests still in flight."""
        self._running = False
        self._thread.join()
        self._end_all(WorldError("the LLM was closed"))

    def _receive(self) -> None:
        while self._running:
            try:
                report = self.world.poll(POLL_TIMEOUT_S)
            except WorldError as exc:
                self._end_all(exc)
                self._running = False
                return
            if report is None:
                continue
            with self._lock:
                reports = (self._requests.pop if report.finished else self._requests.get)(report.request_id, None)
            if reports is not None:
                reports.put(report)

    def _end_all(self, error: Exception) -> None:
        with self._lock:
            requests, self._requests = self._requests, {}
        for reports in requests.values():
            reports.put(error)
