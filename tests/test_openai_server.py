"""The OpenAI-compatible API on a real Triton server serving the SmolLM2 pair, driven by the official ``openai``
package: completions and chat completions, streamed and not, equal to the runtime's greedy `ar` text; usage,
finish reasons and PEARL's statistics; stop sequences; every bad input answered in OpenAI's error shape with
its HTTP status; a client that goes away mid-stream cancels its generation."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from conftest import CACHE_DIR, REPO, ar_records, free_port
from pearl.serving.openai_app import FrontendConfig, OpenAIServer
from pearl.serving.repository import build_repository, values_for_engines
from pearl.serving.server import TritonServer
from test_triton_server import pearl_metrics

pytestmark = [pytest.mark.mpi, pytest.mark.triton]

PROMPT = "def quicksort(arr):"
QUESTION = "What is the capital of France?"
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def frontend(smollm2_engines, tmp_path_factory):
    values = values_for_engines(smollm2_engines)
    repository = build_repository(REPO / "triton_repo", tmp_path_factory.mktemp("triton") / "repo", values)
    triton = TritonServer(repository, CACHE_DIR, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=tmp_path_factory.mktemp("log") / "server.log")
    with triton, OpenAIServer(FrontendConfig.for_repository(triton.grpc_url, values), "127.0.0.1",
                              free_port()) as frontend:
        frontend.triton = triton
        yield frontend


@pytest.fixture(scope="module")
def client(frontend) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(smollm2_engines) -> str:
    return smollm2_engines.name


@pytest.fixture(scope="module")
def expected(smollm2_engines) -> dict:
    """The runtime's greedy `ar` records: the completion prompt, and the question as a chat message."""
    return {"completion": ar_records(smollm2_engines, [PROMPT], MAX_TOKENS)[PROMPT],
            "chat": ar_records(smollm2_engines, [QUESTION], MAX_TOKENS, chat=True)[QUESTION]}


def check_metrics(metrics: dict, completion_tokens: int) -> None:
    spec, pearl = metrics["speculative_decoding"], metrics["pearl"]
    assert pearl["generated_tokens"] == completion_tokens and pearl["target_forwards"] >= 1
    assert spec["num_accepted_draft_tokens"] == pearl["total_accepted_draft_tokens"] <= spec["num_draft_tokens"]
    if spec["num_spec_steps"]:  # vLLM's mean acceptance length: 1 + accepted / drafts
        assert spec["mean_acceptance_length"] == pytest.approx(
            1 + spec["num_accepted_draft_tokens"] / spec["num_spec_steps"], rel=1e-4)


def test_models_lists_the_pair(client, model):
    assert [m.id for m in client.models.list()] == [model]


@pytest.mark.parametrize("stream", [False, True])
def test_completion_equals_the_runtime_output(client, model, expected, stream):
    record = expected["completion"]
    args = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    if stream:
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
        assert len(chunks) > 3  # text arrived piece by piece
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish_reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage, metrics = chunks[-1].usage, chunks[-1].model_extra["metrics"]
    else:
        response = client.completions.create(**args)
        text, finish_reason = response.choices[0].text, response.choices[0].finish_reason
        usage, metrics = response.usage, response.model_extra["metrics"]
    assert text == record["text"] and finish_reason == "length"
    assert (usage.prompt_tokens, usage.completion_tokens) == (record["stats"]["prompt_tokens"], MAX_TOKENS)
    check_metrics(metrics, MAX_TOKENS)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_completion_goes_through_the_chat_template(client, model, expected, stream):
    record = expected["chat"]
    args = dict(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS,
                temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **args))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish_reason, metrics = chunks[-1].choices[0].finish_reason, chunks[-1].model_extra["metrics"]
    else:
        response = client.chat.completions.create(**args)
        text, finish_reason = response.choices[0].message.content, response.choices[0].finish_reason
        metrics = response.model_extra["metrics"]
        assert response.usage.prompt_tokens == record["stats"]["prompt_tokens"]
    assert text == record["text"] and finish_reason == record["finish_reason"]  # the answer ends with EOS
    check_metrics(metrics, record["stats"]["generated_tokens"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_ends_the_text_and_is_left_out(client, model, expected, smollm2_engines, stream):
    from pearl.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(smollm2_engines / "target"))
    whole, ids = expected["completion"]["text"], expected["completion"]["token_ids"]
    # stop sequences are matched on tokens (pearl.stopping): a token whose text encodes back to that one token
    stop = next(text for text in map(tokenizer.decode, ([i] for i in ids[2:]))
                if len(tokenizer.encode(text, add_special_tokens=False)) == 1 and text.strip())
    args = dict(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=[stop])
    if stream:
        chunks = list(client.completions.create(stream=True, **args))
        text, finish_reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        choice = client.completions.create(**args).choices[0]
        text, finish_reason = choice.text, choice.finish_reason
    assert text == whole[:whole.index(stop)] and finish_reason == "stop"


@pytest.mark.parametrize("mode", ["pearl", "sd"])
def test_a_request_may_fix_the_window_and_the_decoding_mode(client, model, expected, mode):
    """The ensemble's num_draft_tokens and decoding_mode as body fields (the OpenAI SDK's extra_body): every
    round drafts its fixed window, and the text is still the target's own."""
    response = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body={"num_draft_tokens": 2, "decoding_mode": mode})
    assert response.choices[0].text == expected["completion"]["text"]
    spec, pearl = (response.model_extra["metrics"][key] for key in ("speculative_decoding", "pearl"))
    assert spec["num_spec_steps"] > 0 and 0 < pearl["mean_gamma"] <= 2
    check_metrics(response.model_extra["metrics"], MAX_TOKENS)


BAD_REQUESTS = [  # (body changes, status, part of the message)
    ({"max_tokens": 0}, 400, "max_tokens must be >= 1"),
    ({"max_tokens": 100000}, 400, "exceeds the models' limit"),
    ({"temperature": -1.0}, 400, "temperature must be a finite number >= 0"),
    ({"top_p": 1.5}, 400, "top_p must be in (0, 1]"),
    ({"presence_penalty": 0.5}, 400, "is not supported"),
    ({"n": 2}, 400, "n must be 1"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    ({"seed": -1}, 400, "seed"),
    ({"max_tokens": "many"}, 400, "max_tokens"),
    ({"extra_body": {"num_draft_tokens": -1}}, 400, "num_draft_tokens must be >= 1"),
    ({"extra_body": {"decoding_mode": "beam"}}, 400, "unknown mode 'beam'"),
    ({"model": "gpt-4o"}, 404, "does not exist"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("changes, status, message", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_with_their_status(client, model, changes, status, message, stream):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **changes}
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(stream=stream, **body)
    assert error.value.status_code == status and message in error.value.message
    assert error.value.type == "invalid_request_error"


def post(frontend, path: str, data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(frontend.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_raw_stream_is_server_sent_events_ending_with_done(frontend, model):
    status, body = post(frontend, "/completions", json.dumps(
        {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}).encode())
    events = [line for line in body.decode().splitlines() if line]
    assert status == 200 and all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_malformed_json_and_unknown_paths_answer_in_openai_shape(frontend):
    status, body = post(frontend, "/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, body = post(frontend, "/embeddings", b"{}")
    assert status == 404 and "message" in json.loads(body)["error"]


def test_a_client_that_leaves_mid_stream_cancels_its_generation(frontend, client, model):
    cancelled = 'pearl_requests_failed_total{model="pearl",reason="cancelled"}'
    before = pearl_metrics(frontend.triton)[cancelled]
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=2000, temperature=0, stream=True)
    for _, _ in zip(range(3), stream):  # generating
        pass
    stream.close()
    deadline = time.monotonic() + 30  # 2000 tokens would take minutes; a few rounds are seconds
    while pearl_metrics(frontend.triton)[cancelled] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pearl_metrics(frontend.triton)[cancelled] == before + 1
    assert client.completions.create(model=model, prompt="Hi", max_tokens=2).choices[0].text  # still serving


def test_the_grafana_dashboard_reads_only_metrics_the_server_exports(frontend, client, model):
    import re
    import urllib.request

    client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0)
    page = urllib.request.urlopen(f"http://127.0.0.1:{frontend.triton.metrics_port}/metrics").read().decode()
    exported = {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line and not line.startswith("#")}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b((?:pearl|nv)_[a-z_]+)\b", re.sub(r'"[^"]*"', "", target["expr"]))}
    assert used and used - exported == set()
