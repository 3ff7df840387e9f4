"""The concurrency benchmark (pearl_bench.concurrency) on a tiny pair: levels count what ran, batching shows."""
import json

from pearl_bench.concurrency import Level, requests_for, run_level, summarize, target_check, write_report
from pearl.params import SamplingParams

import pytest

pytestmark = pytest.mark.mpi


def test_levels_measure_what_ran_and_report_it(llm_factory, tiny, tmp_path):
    llm = llm_factory(tiny["close_draft"], tiny["target"], max_batch_size=4)
    prompts = [[1, 2, 3], [5, 9, 11], [42, 7], [8] * 6]
    sampling = SamplingParams(max_tokens=12, ignore_eos=True)
    levels = [run_level(llm, prompts, c, requests_for(c, 4), sampling, gamma=3) for c in (1, 4)]
    for level in levels:
        assert level.requests == 4 and level.output_tokens == 4 * 12
        assert level.tokens_per_s > 0 and level.latency_mean_s >= level.ttft_mean_s > 0
    assert levels[0].mean_batch_size == 1.0 and levels[1].mean_batch_size > 2
    summary = summarize(levels, mode="pearl", gamma=3, prompts=4, max_tokens=12, max_batch_size=4)
    files = write_report(summary, tmp_path, "tiny")
    assert all(f.exists() for f in files)
    assert json.loads(files[0].read_text())["levels"][1]["concurrency"] == 4
    assert "| 4 | 4 |" in files[1].read_text()


def test_requests_per_level_and_target_check():
    assert [requests_for(c, 2) for c in (1, 2, 4, 16)] == [2, 2, 4, 16]
    assert requests_for(3, 4) == 6
    one = Level(1, 2, 20, 10.0, 2.0, 5.0, 5.0, 1.0, 1.0)
    eight = Level(8, 8, 160, 20.0, 8.0, 9.0, 9.0, 2.0, 7.5)
    check = target_check([one, eight])
    assert check["throughput_ratio"] == 4.0 and check["latency_ratio"] == 1.8 and check["met"]
    assert not target_check([one, Level(8, 8, 160, 20.0, 8.0, 11.0, 11.0, 2.0, 7.5)])["met"]
    assert target_check([one]) is None
