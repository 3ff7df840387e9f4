"""A real Triton server on loopback serving the SmolLM2 pair: the ensemble over gRPC and HTTP, streamed and
not, equal to the runtime's `ar` output; requests in a row and at once; every bad input refused while the
server keeps serving; metrics; a clean stop."""
from __future__ import annotations

import queue
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CACHE_DIR, REPO, ar_records, free_port, mpich_shared_memory
from pearl.processes import process_alive, process_tree
from pearl.serving.client import (INPUT_TYPES, RequestFailed, grpc_generate, http_generate, http_generate_stream,
                                  to_array)
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer

pytestmark = [pytest.mark.mpi, pytest.mark.triton]

PROMPTS = ["def quicksort(arr):", "The capital of France is", "import numpy as np\n"]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server(smollm2_engines, tmp_path_factory):
    repository = build_repository(REPO / "triton_repo", tmp_path_factory.mktemp("triton") / "repo",
                                  values_for_engines(smollm2_engines))
    server = TritonServer(repository, CACHE_DIR, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=tmp_path_factory.mktemp("log") / "server.log")
    with server:
        yield server
    assert server.process.poll() is not None


@pytest.fixture(scope="module")
def expected(smollm2_engines) -> dict:
    """The runtime's own greedy `ar` text (and ids, under (prompt, "ids")) for each prompt: the target alone."""
    out = {}
    for prompt, record in ar_records(smollm2_engines, PROMPTS, MAX_TOKENS).items():
        out[prompt], out[prompt, "ids"] = record["text"], record["token_ids"]
    return out


def check_stats(stats: dict, fixed_window: bool) -> None:
    """The last chunk's statistics add up; with a ``fixed_window`` the draft drafted. An adaptive request may
    decode alone throughout: on this self-draft pair PEARL at the prior acceptance runs near the target alone,
    and the profile (measured at the build, on the machine at hand) decides whether a short request can win
    back the draft's catch-up."""
    drafted, accepted = stats["total_draft_tokens"], stats["total_accepted_draft_tokens"]
    assert 0 <= accepted <= drafted and 1 <= stats["target_forwards"] <= MAX_TOKENS
    assert drafted > 0 or not fixed_window
    assert stats["acceptance_rate"] == pytest.approx(accepted / drafted if drafted else 0.0, rel=1e-5)


@pytest.mark.parametrize("protocol", ["grpc-stream", "grpc", "http", "http-stream"])
def test_ensemble_greedy_text_equals_the_runtime_ar_output(server, expected, protocol):
    prompt = PROMPTS[0]
    args = dict(max_tokens=MAX_TOKENS, exclude_input_in_output=True, num_draft_tokens=3)
    if protocol.startswith("grpc"):
        chunks = list(grpc_generate(server.grpc_url, prompt, stream=protocol == "grpc-stream", **args))
    elif protocol == "http":
        chunks = [http_generate(server.http_url, prompt, **args)]
    else:
        chunks = list(http_generate_stream(server.http_url, prompt, **args))
    assert "".join(c.text for c in chunks) == expected[prompt]
    if protocol.endswith("stream"):
        assert len(chunks) > 2  # text arrived piece by piece
    check_stats(chunks[-1].stats, fixed_window=True)


@pytest.mark.parametrize("protocol", ["grpc-stream", "http"])
def test_the_bls_model_answers_like_the_ensemble(server, expected, protocol):
    """With adaptive windows (no num_draft_tokens)."""
    prompt = PROMPTS[1]
    args = dict(max_tokens=MAX_TOKENS, exclude_input_in_output=True, model="pearl_bls")
    chunks = (list(grpc_generate(server.grpc_url, prompt, **args)) if protocol == "grpc-stream"
              else [http_generate(server.http_url, prompt, **args)])
    assert "".join(c.text for c in chunks) == expected[prompt]
    check_stats(chunks[-1].stats, fixed_window=False)
    with pytest.raises(RequestFailed, match="max_tokens must be >= 1"):
        list(grpc_generate(server.grpc_url, prompt, max_tokens=0, model="pearl_bls"))


def test_closing_the_grpc_stream_stops_the_generation(server):
    """Through pearl_bls (an ensemble's running step never hears of it in tritonserver 2.51)."""
    cancelled = 'pearl_requests_failed_total{model="pearl",reason="cancelled"}'
    before = pearl_metrics(server)[cancelled]
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put(error))
    inputs = []
    for name, value in {"text_input": "def quicksort(arr):", "max_tokens": 2000, "stream": True}.items():
        array = to_array(name, value)
        inputs.append(grpcclient.InferInput(name, list(array.shape), INPUT_TYPES[name]))
        inputs[-1].set_data_from_numpy(array)
    client.async_stream_infer("pearl_bls", inputs)
    assert [responses.get(timeout=120) for _ in range(2)] == [None, None]  # generating
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 30  # 2000 tokens would take minutes; a few rounds are seconds
    while pearl_metrics(server)[cancelled] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pearl_metrics(server)[cancelled] == before + 1
    assert http_generate(server.http_url, "Hi", max_tokens=2).text  # the next request is served


def test_output_includes_the_prompt_unless_excluded(server, expected):
    prompt = PROMPTS[1]
    assert http_generate(server.http_url, prompt, max_tokens=MAX_TOKENS).text == prompt + expected[prompt]


def test_stop_words_end_the_output_and_are_included(server, expected, smollm2_engines):
    from pearl.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_engines / "target"))
    prompt = PROMPTS[0]
    ids = expected[prompt, "ids"]
    # a token whose text encodes back to that one token, so the stop word matches it exactly
    position = next(i for i in range(2, len(ids)) if tokenizer.encode(tokenizer.decode([ids[i]]),
                                                                       add_special_tokens=False) == [ids[i]])
    stop = tokenizer.decode([ids[position]])
    cut = ids[:ids.index(ids[position]) + 1]
    got = http_generate(server.http_url, prompt, max_tokens=MAX_TOKENS, exclude_input_in_output=True,
                        stop_words=[stop])
    assert got.text == tokenizer.decode(cut, skip_special_tokens=True) and got.text.endswith(stop)


def test_requests_in_a_row_and_at_once_are_all_answered(server, expected):
    for prompt in PROMPTS:  # in a row, alternating protocols
        assert http_generate(server.http_url, prompt, max_tokens=MAX_TOKENS, exclude_input_in_output=True).text \
            == expected[prompt]

    def grpc_text(prompt):
        return "".join(c.text for c in grpc_generate(server.grpc_url, prompt, max_tokens=MAX_TOKENS,
                                                     exclude_input_in_output=True))

    with ThreadPoolExecutor(max_workers=4) as pool:  # queued on the one world, none lost
        texts = list(pool.map(grpc_text, PROMPTS + PROMPTS[:1]))
    assert texts == [expected[p] for p in PROMPTS + PROMPTS[:1]]


def test_many_streams_at_once_each_get_their_own_text_and_the_server_stays_up(server, expected):
    """Three times more streams than the pair batches (max_batch_size 4): the pearl model's workers respond
    for many requests at once, through its one thread that calls into Triton (concurrent calls from
    several threads crashed tritonserver's python backend under perf_analyzer load)."""
    def stream_text(prompt):
        return "".join(c.text for c in grpc_generate(server.grpc_url, prompt, max_tokens=MAX_TOKENS,
                                                     exclude_input_in_output=True))

    prompts = PROMPTS * 4
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        texts = list(pool.map(stream_text, prompts))
    assert texts == [expected[p] for p in prompts]
    assert server.process.poll() is None


BAD_INPUTS = [
    ({"text_input": ""}, "text_input is empty"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"max_tokens": -3}, "max_tokens must be >= 1"),
    ({"max_tokens": 100000}, "exceeds the models' limit"),
    ({"text_input": "word " * 3000}, "exceeds the models' limit"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 0.0}, r"top_p must be in (0, 1]"),
    ({"top_p": 1.5}, r"top_p must be in (0, 1]"),
    ({"beam_width": 2}, "'beam_width'=2 is not supported"),
    ({"return_generation_logits": True}, "is not supported"),
    ({"bad_words": ["foo"]}, "bad_words is not supported"),
    ({"decoding_mode": "beam"}, "unknown mode 'beam'"),
]


JSON_BAD_INPUTS = [(i, m) for i, m in BAD_INPUTS if i.get("temperature") == i.get("temperature")]  # no NaN in JSON


@pytest.mark.parametrize("inputs, message", JSON_BAD_INPUTS)
def test_bad_input_gets_a_clear_error_over_http(server, inputs, message):
    request = {"text_input": "hello", "max_tokens": 4, **inputs}
    with pytest.raises(RequestFailed) as error:
        http_generate(server.http_url, request.pop("text_input"), **request)
    assert message in str(error.value)


@pytest.mark.parametrize("inputs, message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error_over_grpc(server, inputs, message):
    request = {"text_input": "hello", "max_tokens": 4, **inputs}
    with pytest.raises(RequestFailed) as error:
        list(grpc_generate(server.grpc_url, request.pop("text_input"), **request))
    assert message in str(error.value)


def test_malformed_tensors_are_refused_by_triton(server):
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"\xff\xfe not utf-8"]], dtype=object))
    wrong_type = grpcclient.InferInput("max_tokens", [1, 1], "FP32")
    wrong_type.set_data_from_numpy(np.array([[4.0]], dtype=np.float32))
    wrong_shape = grpcclient.InferInput("max_tokens", [1, 2], "INT32")
    wrong_shape.set_data_from_numpy(np.array([[4, 5]], dtype=np.int32))
    for inputs, message in (([wrong_type], "max_tokens"), ([wrong_shape], "unexpected shape for input 'max_tokens'")):
        errors = []
        client.start_stream(callback=lambda result, error: errors.append(error))
        client.async_stream_infer("ensemble", [text, *inputs])
        client.stop_stream()
        assert errors and errors[0] is not None and message in str(errors[0])
    with pytest.raises(RequestFailed, match="not valid UTF-8"):
        list(grpc_generate(server.grpc_url, b"\xff\xfe not utf-8", max_tokens=4))


def pearl_metrics(server) -> dict[str, float]:
    """The pearl model's Prometheus samples, keyed by name with labels."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
            if line.startswith("pearl_")}


def test_server_is_healthy_after_bad_input_and_reports_metrics(server, expected):
    with pytest.raises(RequestFailed):
        http_generate(server.http_url, "", max_tokens=4)
    assert server.ready()
    prompt = PROMPTS[2]
    assert http_generate(server.http_url, prompt, max_tokens=MAX_TOKENS, exclude_input_in_output=True).text \
        == expected[prompt]
    values = {name.split("{")[0]: value for name, value in pearl_metrics(server).items()}
    assert values["pearl_requests_total"] >= 1 and values["pearl_generated_tokens_total"] >= MAX_TOKENS
    assert values["pearl_draft_tokens_total"] >= values["pearl_accepted_draft_tokens_total"]
    assert values["pearl_target_forwards_total"] >= 1 and values["pearl_tokens_per_second"] > 0


def test_stopping_the_server_leaves_no_processes(smollm2_engines, tmp_path):
    repository = build_repository(REPO / "triton_repo", tmp_path / "repo", values_for_engines(smollm2_engines))
    server = TritonServer(repository, CACHE_DIR, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=tmp_path / "server.log")
    shared_memory = mpich_shared_memory()
    with server:
        assert http_generate(server.http_url, "Hi", max_tokens=2).text
        processes = process_tree(server.process.pid)
        assert len(processes) >= 7  # server, 3 stubs, world host, MPI's process manager and proxy, 2 ranks
    deadline = time.monotonic() + 15  # exited ranks are reaped by MPI's proxy as it exits, just after
    while any(process_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in processes if process_alive(pid)] == []
    assert mpich_shared_memory() - shared_memory == set()


FUZZ_SETTINGS = dict(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
SHORT_OR_INVALID = st.one_of(st.integers(-10, 6), st.integers(2048, 2**31 - 1))  # valid ones stay short


def answered_or_refused(call) -> None:
    """A response is a generation or a clear error; nothing else (no hang, no crash)."""
    try:
        chunks = call()
        assert all(isinstance(c.text, str) for c in chunks)
    except RequestFailed as exc:
        assert str(exc).strip()


@settings(**FUZZ_SETTINGS)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), max_tokens=SHORT_OR_INVALID,
       temperature=st.floats(-2, 5, width=32), top_p=st.floats(-1, 2, width=32), top_k=st.integers(-5, 2**31 - 1),
       seed=st.integers(0, 2**64 - 1), stream=st.booleans())
def test_fuzzed_http_requests_get_an_answer_or_a_clear_error(server, text, max_tokens, temperature, top_p, top_k,
                                                              seed, stream):
    args = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    if stream:
        answered_or_refused(lambda: list(http_generate_stream(server.http_url, text, **args)))
    else:
        answered_or_refused(lambda: [http_generate(server.http_url, text, **args)])
    assert server.ready()


@settings(**FUZZ_SETTINGS)
@given(text=st.binary(max_size=40), max_tokens=SHORT_OR_INVALID,
       temperature=st.floats(width=32), top_p=st.floats(width=32), stream=st.booleans(),
       mode=st.sampled_from(["pearl", "sd", "ar", "", "beam"]), gamma=st.integers(-3, 40))
def test_fuzzed_grpc_requests_get_an_answer_or_a_clear_error(server, text, max_tokens, temperature, top_p, stream,
                                                              mode, gamma):
    args = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, decoding_mode=mode,
                num_draft_tokens=gamma)
    answered_or_refused(lambda: list(grpc_generate(server.grpc_url, text, stream=stream, **args)))
    assert server.ready()
