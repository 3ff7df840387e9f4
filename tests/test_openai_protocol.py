"""The OpenAI API's request checks and response shapes (pearl.serving.openai_protocol), without a server:
what each body becomes as ensemble inputs, which bodies are refused, and how stop sequences are cut from
streamed and whole text."""
from __future__ import annotations

import pydantic
import pytest

from pearl.schema import OUTPUTS
from pearl.serving.errors import kind_of_message, tagged
from pearl.serving.openai_protocol import ChatRequest, CompletionRequest, Responses, StopText, error_body, metrics

STATS = {output.name: ([1, 2] if output.vector else 3) for output in OUTPUTS}


def test_a_completion_body_becomes_the_ensemble_inputs():
    body = CompletionRequest(model="m", prompt=["Hi"], temperature=0, seed=7, stop="\n", stream=True)
    assert body.ensemble_inputs("Hi", 100) == {
        "text_input": "Hi", "max_tokens": 16, "stream": True, "exclude_input_in_output": True, "temperature": 0,
        "seed": 7, "stop_words": ["\n"]}


def test_the_ensembles_decoding_inputs_pass_through_and_absent_ones_stay_out():
    messages = [{"role": "user", "content": "Hi"}]
    body = ChatRequest(model="m", messages=messages, num_draft_tokens=3, decoding_mode="sd")
    inputs = body.ensemble_inputs("t", 100)
    assert (inputs["num_draft_tokens"], inputs["decoding_mode"]) == (3, "sd")
    assert not {"num_draft_tokens", "decoding_mode"} & set(ChatRequest(model="m", messages=messages)
                                                            .ensemble_inputs("t", 100))


def test_chat_takes_max_completion_tokens_and_an_absent_limit_fills_the_context():
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}]
    body = ChatRequest(model="m", messages=messages, max_completion_tokens=5)
    assert body.ensemble_inputs("t", 100)["max_tokens"] == 5
    assert ChatRequest(model="m", messages=messages).ensemble_inputs("t", 100)["max_tokens"] == 100
    assert body.messages[0].as_template_message() == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("body", [
    {"prompt": "a", "n": 2}, {"prompt": ["a", "b"]}, {"prompt": "a", "echo": True}, {"prompt": "a", "logprobs": 2},
    {"prompt": "a", "stop": list("abcde")}, {"prompt": "a", "seed": -1}, {"messages": []},
    {"messages": [{"role": "user", "content": "a"}], "logprobs": True},
    {"messages": [{"role": "robot", "content": "a"}]},
])
def test_bodies_pearl_cannot_serve_are_refused(body):
    request = ChatRequest if "messages" in body else CompletionRequest
    with pytest.raises(pydantic.ValidationError):
        request(model="m", **body)


def test_stop_text_holds_back_what_may_start_a_stop_sequence_and_drops_it_at_the_end():
    stops = StopText(["END"])
    assert [stops.feed(piece) for piece in ["abc E", "N", "x E", "ND"]] == ["abc ", "", "ENx ", ""]
    assert stops.finish("", "stop") == ""
    assert StopText(["END"]).finish("a END", "length") == "a END"  # not stopped by it: left as it is


def test_responses_carry_usage_finish_reason_and_pearl_statistics():
    body = Responses(chat=True, model="m").body("hello", "length", STATS)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "hello"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert body["metrics"] == metrics(STATS) and body["metrics"]["speculative_decoding"]["acceptance_histogram"] \
        == [1, 2]
    last, usage = Responses(chat=False, model="m").last_chunk("!", "stop", STATS, include_usage=True)
    assert last["choices"][0]["finish_reason"] == "stop" and usage["choices"] == [] and usage["usage"]


def test_error_kinds_travel_in_the_message_and_map_to_http_statuses():
    assert kind_of_message(tagged("max_tokens must be >= 1", "invalid")) == ("invalid", "max_tokens must be >= 1")
    assert kind_of_message("no tag") == ("error", "no tag")
    assert error_body("x", "invalid")[0] == 400 and error_body("x", "not_found")[0] == 404
    assert error_body("x", "unavailable")[0] == 503 and error_body("x", "error")[1]["error"]["type"] == "server_error"
