"""`make soak --kill-every`'s accounting without a server: the pause a kill caused is the longest gap between two
responses of a streamed request that spans it (from perf_analyzer's profile export), and requests counted as
failed by the server are reported as lost."""
from __future__ import annotations

import json
import os

import subprocess
import sys
import time

from pearl_bench.soak import resume_pauses, serving_ranks, summarize


def profile(path, requests):
    """A perf_analyzer profile export holding these requests ([sent, response, response, ...] in seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"timestamp": int(t[0] * 1e9), "response_timestamps": [int(x * 1e9) for x in t[1:]]} for t in requests]
    path.write_text(json.dumps({"experiments": [{"requests": entries}]}))


def test_a_kill_reports_the_longest_gap_of_the_requests_it_interrupted(tmp_path):
    profile(tmp_path / "window000" / "profile_c8.json", [[0.0, 0.1, 0.2, 3.2, 3.3], [0.0, 0.5, 0.6]])
    profile(tmp_path / "window001" / "profile_c8.json", [[1.0, 1.1, 2.9, 3.0]])
    pauses = resume_pauses(tmp_path, [1.5, 10.0])
    assert pauses[0]["pause_s"] == 3.0 and pauses[0]["requests_in_flight"] == 2
    assert pauses[1] == {"kill_at": 10.0, "pause_s": None, "requests_in_flight": 0}  # nothing in flight


def test_requests_the_server_counted_as_failed_are_lost():
    windows = [{"t_s": 0.0, "error": None, "failed": 0.0}, {"t_s": 1.0, "error": None, "failed": 2.0}]
    summary = summarize(windows, [(0.0, 100), (1.0, 100)], warmup_windows=1)
    assert summary["lost_requests"] == 2 and summary["errors"] == 0


def test_the_killer_picks_the_serving_worlds_ranks_not_a_spares():
    """The serving world is the oldest: a spare always starts after the world it stands in for."""
    def fake_rank():  # "pearl.ranks.worker" in its command line, as a real rank has
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pearl.ranks.worker"])
    serving = [fake_rank(), fake_rank()]
    time.sleep(0.5)
    spare = [fake_rank(), fake_rank()]
    try:
        assert serving_ranks(os.getpid()) == sorted(p.pid for p in serving)
    finally:
        for process in serving + spare:
            process.kill()
            process.wait()
