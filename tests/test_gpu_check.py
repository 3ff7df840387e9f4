"""scripts/gpu_check.sh's code path, run here on the CPU (``--cpu``): the GPU run itself stays for a GPU host."""
import json

from pearl_bench.gpu_check import MODES, main

import pytest

pytestmark = pytest.mark.mpi


def test_the_gpu_check_runs_its_tiny_pair_and_writes_every_modes_figures(tmp_path, capsys):
    assert main(["--cpu", "--pairs", "tiny", "--max-tokens", "6", "--requests", "1", "--work", str(tmp_path / "work"),
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    tiny = report["pairs"]["tiny"]
    assert report["host"]["tensorrt_llm"] is None and "tensorrt_llm" not in tiny  # not importable here
    assert tiny["torch"]["devices"] == ["cpu", "cpu"]
    for mode in MODES:
        figures = tiny["torch"][mode]
        assert figures["tokens_per_s"] > 0 and 0 <= figures["round_overhead"] < 1
        assert [r["generated_tokens"] for r in figures["requests"]] == [6]
        assert figures["same_tokens_as_ar"] and figures["first_difference"] is None  # float32 on the CPU: exact
    assert tiny["torch"]["pearl"]["acceptance_rate"] > 0  # tied random models agree often enough to draft


def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path, capsys):
    assert main(["--work", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_first_difference_names_the_earliest_position_any_output_leaves_the_reference():
    from pearl_bench.gpu_check import first_difference

    assert first_difference([1, 2, 3], [[1, 2, 3], [1, 2, 3]]) is None
    assert first_difference([1, 2, 3, 4], [[1, 2, 3, 9], [1, 7, 3, 4]]) == 1
