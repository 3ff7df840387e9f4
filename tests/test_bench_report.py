"""The bench report's lines against issue 15's targets (bench/pearl_bench/report.py): printed, never asserted."""
from __future__ import annotations

from pearl_bench.report import STRETCH, target_lines


def summary(**humaneval_tokens_per_s: float) -> dict:
    """A summary with one class, humaneval, whose methods decoded at the given tokens/s."""
    names = {"ar": "ar", "pearl": "pearl(gamma=auto)", "spec": "llama.cpp-spec(gamma=2)", "plain": "llama.cpp(t=2)"}
    methods = {names[key]: {"tokens_per_s": value} for key, value in humaneval_tokens_per_s.items()}
    return {"classes": ["humaneval"], "groups": {"overall": {"methods": methods}, "humaneval": {"methods": methods}}}


def test_the_report_sets_pearl_beside_llama_cpps_plain_decoding_on_humaneval():
    lines = target_lines(summary(ar=10.0, pearl=15.0, spec=12.0, plain=20.0))
    assert lines == ["pearl(gamma=auto) vs ar, every class: 1.50x (lowest: humaneval) (target >= 1.0x: met)",
                     "pearl(gamma=auto) vs ar, humaneval: 1.50x (target >= 2.0x: short by 0.50x)",
                     "pearl(gamma=auto) vs llama.cpp-spec, humaneval: 1.25x (target >= 1.0x: met)",
                     f"{STRETCH}: 0.75x (target >= 1.0x: short by 0.25x)"]


def test_without_llama_cpp_runs_the_report_leaves_out_the_lines_that_need_them():
    lines = target_lines(summary(ar=10.0, pearl=21.0))
    assert [line.split(":")[0] for line in lines] == ["pearl(gamma=auto) vs ar, every class",
                                                      "pearl(gamma=auto) vs ar, humaneval"]
    assert lines[1].endswith("2.10x (target >= 2.0x: met)")
