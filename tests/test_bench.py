"""`make bench` and `make perf` in short runs on the SmolLM2 pair: files are produced, numbers parse, PEARL and
SD outputs equal ar's, an interrupted bench resumes without redoing work, perf_analyzer, genai-perf and AIPerf
measure the server."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CACHE_DIR, REPO, ar_records, free_port

pytestmark = [pytest.mark.mpi, pytest.mark.triton]


def run_script(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def bench(smollm2_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ("--engines", str(smollm2_engines), "--per-class", "2", "--classes", "humaneval,chat", "--max-tokens", "12",
            "--gammas", "2,3", "--no-llama-cpp", "--cache-dir", str(CACHE_DIR), "--out", str(out))
    run_script("bench.py", *args)
    return out, args


def test_bench_writes_records_summary_and_chart_per_class(bench):
    out, _ = bench
    for name in ("records.jsonl", "summary.json", "summary.md", "speedup.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["humaneval", "chat"] and set(summary["groups"]) == {"overall", "humaneval", "chat"}
    for group, data in summary["groups"].items():
        methods = data["methods"]
        assert data["prompts"] == (4 if group == "overall" else 2)
        assert {"ar", "pearl(gamma=auto)", "assisted"} <= set(methods)
        assert any(k.startswith("sd(gamma=") for k in methods) and any(k.startswith("pearl(gamma=") and
                                                                      k != "pearl(gamma=auto)" for k in methods)
        assert methods["ar"]["vs_ar"] == pytest.approx(1.0)
        for label, values in methods.items():
            assert values["tokens_per_s"] > 0 and values["tokens"] > 0, label
            if label.startswith(("sd", "pearl")):
                assert values["identical_to_ar"] == f"{data['prompts']}/{data['prompts']}", (group, label,
                                                                                              values["divergences"])
                assert values["target_forwards"] > 0 and 0 <= values["acceptance_rate"] <= 1
                if label == "pearl(gamma=auto)":  # 12 tokens may not win back the draft's catch-up on a prompt
                    assert 0 <= values["drafted_share"] <= 1 and values["mean_gamma"] >= 0
                else:
                    assert 0 < values["drafted_share"] <= 1 and values["mean_gamma"] > 0
                if label.startswith("sd"):
                    assert values["sd_share"] == 1.0
                elif label != "pearl(gamma=auto)":  # a fixed PEARL window runs PEARL rounds only
                    assert values["sd_share"] == 0.0
    assert set(summary["sweeps"]) == {"sd(gamma=2)", "sd(gamma=3)", "pearl(gamma=2)", "pearl(gamma=3)"}
    steps = summary["draft_step_s"]
    assert steps["served"] > 0 and steps["float32, default linears"] > 0 and steps["float32, cpu_linear auto"] > 0
    text = (out / "summary.md").read_text()
    assert "## humaneval (2 prompts)" in text and "## chat (2 prompts)" in text and "draft step as served" in text


def test_bench_resumes_without_redoing_finished_runs(bench):
    out, args = bench
    before = (out / "records.jsonl").read_text()
    result = run_script("bench.py", *args, "--no-draft-step")
    assert (out / "records.jsonl").read_text() == before  # nothing ran again
    assert "pearl(gamma=auto) vs ar, humaneval" in result.stdout


# `make test` names the genai-perf that `make genai-perf` installs into its own venv
GENAI_PERF = os.environ.get("PEARL_GENAI_PERF", str(REPO / ".venv-genai" / "bin" / "genai-perf"))


def test_perf_analyzer_and_genai_perf_against_the_server(smollm2_engines, tmp_path):
    out = tmp_path / "perf"
    out.mkdir()
    (out / "profile_nostream_c1.json").write_text("{}")  # a run before left its exports: run again over them
    run_script("perf.py", "--engines", str(smollm2_engines), "--prompts", "2", "--max-tokens", "16",
               "--concurrency", "1,2", "--requests-per-point", "2", "--out", str(out), "--cache-dir", str(CACHE_DIR),
               "--genai-perf", GENAI_PERF, "--no-aiperf", "--num-draft-tokens", "2",
               "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()))
    summary = json.loads((out / "summary.json").read_text())
    points = {(p["stream"], p["concurrency"]): p for p in summary["points"]}
    assert set(points) == {(False, 1), (False, 2), (True, 1), (True, 2)}
    for point in points.values():
        assert point["requests_per_s"] > 0 and 0 < point["p50_ms"] <= point["p99_ms"]
    assert points[True, 1]["time_to_first_token_ms"] > 0 and points[True, 1]["inter_token_latency_ms"] > 0
    for name in ("summary.md", "latency_throughput.png", "perf_stream_c2.csv", "profile_nostream_c1.json"):
        assert (out / name).stat().st_size > 0, name
    served = {}  # prompt -> the text the server answered under load (perf_analyzer keeps the responses)
    for experiment in json.loads((out / "profile_nostream_c2.json").read_text())["experiments"]:
        for request in experiment["requests"]:
            served[request["request_inputs"]["text_input"]] = request["response_outputs"][0]["text_output"]
    expected = ar_records(smollm2_engines, list(served), max_tokens=16)
    assert served and served == {prompt: record["text"] for prompt, record in expected.items()}
    genai = {g["concurrency"]: g for g in summary["genai_perf"]}
    assert set(genai) == {1, 2}
    for g in genai.values():
        assert 0 < g["time_to_first_token_ms"] < g["request_latency_ms"] and g["inter_token_latency_ms"] > 0
        assert g["output_tokens_per_s"] > 0 and 0 < g["output_tokens_mean"] <= 20  # re-tokenized text
    assert list((out / "genai_perf" / "c2").glob("*/profile_export_genai_perf.csv"))
    genai_inputs = json.loads(next((out / "genai_perf" / "c2").glob("*/inputs.json")).read_text())
    assert all(entry["num_draft_tokens"] == [2] for entry in genai_inputs["data"])
    assert "output tokens/s/user" in (out / "summary.md").read_text()


# and the AIPerf that `make aiperf` installs into its own venv
AIPERF = os.environ.get("PEARL_AIPERF", str(REPO / ".venv-aiperf" / "bin" / "aiperf"))


def test_aiperf_against_the_openai_api(smollm2_engines, tmp_path):
    out = tmp_path / "perf"
    # a fixed window: every request drafts, whatever the tiny pair's profile says adaptive windows would do
    run_script("perf.py", "--engines", str(smollm2_engines), "--prompts", "2", "--max-tokens", "48",
               "--num-draft-tokens", "3",
               "--concurrency", "1,2", "--requests-per-point", "2", "--out", str(out), "--cache-dir", str(CACHE_DIR),
               "--no-genai-perf", "--aiperf", AIPERF, "--openai-port", str(free_port()),
               "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()))
    summary = json.loads((out / "summary.json").read_text())
    aiperf = {a["concurrency"]: a for a in summary["aiperf"]}
    assert set(aiperf) == {1, 2} and summary["genai_perf"] == []
    for a in aiperf.values():
        assert 0 < a["time_to_first_token_ms"] < a["request_latency_ms"] and a["inter_token_latency_ms"] > 0
        assert a["output_tokens_per_s"] > 0 and 0 < a["output_tokens_mean"] <= 60  # re-tokenized text
        # from the responses' metrics.speculative_decoding: AIPerf read them
        assert 1 <= a["mean_acceptance_length"] <= 4 and 0 <= a["draft_acceptance_rate_pct"] <= 100
    sent = json.loads(next((out / "aiperf" / "c2").rglob("inputs.json")).read_text())["data"][0]["payloads"][0]
    assert sent["stream"] is True and sent["max_completion_tokens"] == 48 and sent["temperature"] == 0
    assert sent["num_draft_tokens"] == 3  # and perf_analyzer's requests had the same window
    assert json.loads((out / "input_stream.json").read_text())["data"][0]["num_draft_tokens"] == [3]
    assert list((out / "aiperf" / "c2").rglob("profile_export_aiperf.csv"))
    assert "draft acceptance %" in (out / "summary.md").read_text()


def test_soak_reports_errors_throughput_and_memory(smollm2_engines, tmp_path):
    out = tmp_path / "soak"
    run_script("soak.py", "--engines", str(smollm2_engines), "--minutes", "0", "--concurrency", "2",
               "--max-tokens", "8", "--prompts", "2", "--requests-per-window", "2", "--out", str(out),
               "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()))
    summary = json.loads((out / "soak.json").read_text())
    assert summary["errors"] == 0 and len(summary["windows"]) == 2
    assert all(w["tokens_per_s"] > 0 and w["server_ready"] for w in summary["windows"])
    assert summary["memory"] and all(m["rss_bytes"] > 100 * 2**20 for m in summary["memory"])
    assert (out / "soak.png").stat().st_size > 0 and "memory growth" in (out / "soak.md").read_text()
