"""The serving pieces without a server: word-list tensors, request validation, pre/postprocessing with the
real SmolLM2 tokenizer, stateless detokenization that never splits a UTF-8 character, template filling."""
from __future__ import annotations

import numpy as np
import pytest

from pearl.tokenizers import load_tokenizer
from pearl.serving import words
from pearl.serving.inputs import RequestError, parse_request
from pearl.serving.postprocessing import Postprocessor
from pearl.serving.preprocessing import Preprocessor
from pearl.serving.repository import (RepositoryError, build_repository, fill_text, template_overrides,
                                      values_for_engines)
from pearl.streams import PairLimits
from pearl.text import text_delta

LIMITS = PairLimits(vocab_size=100, max_seq_len=64, max_batch_size=4, eos_token_ids=(2,))


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return load_tokenizer(str(smollm2))


def request(**tensors) -> dict[str, np.ndarray]:
    base = {"input_ids": np.array([[5, 6, 7]], dtype=np.int32), "request_output_len": np.array([[8]], np.int32)}
    base.update({name: np.array([[value]]) for name, value in tensors.items()})
    return base


def test_word_lists_round_trip_in_tensorrt_llm_layout():
    lists = [(11, 12), (13,), (14, 15, 16)]
    tensor = words.to_tensor(lists)
    assert tensor.tolist() == [[11, 12, 13, 14, 15, 16], [2, 3, 6, -1, -1, -1]]
    assert words.from_tensor(tensor) == tuple(lists)
    assert words.to_tensor([]).tolist() == [[0], [-1]] and words.from_tensor(words.to_tensor([])) == ()
    with pytest.raises(ValueError, match="malformed word list"):
        words.from_tensor(np.array([[1, 2], [5, -1]]))


def test_a_valid_request_becomes_its_final_generation_request():
    parsed = parse_request(request(temperature=np.float32(0.5), runtime_top_k=np.int32(7), seed=np.uint64(3),
                                   streaming=True, num_draft_tokens=np.int32(5),
                                   decoding_mode=b"sd"), LIMITS, 41)
    generation = parsed.generation
    assert generation.prompt_ids == (5, 6, 7) and parsed.stream and generation.gamma == 5
    assert generation.mode.name == "SD" and generation.request_id == 41
    s = generation.sampling
    assert (s.temperature, s.top_k, s.seed, s.max_tokens) == (0.5, 7, 3, 8)
    assert parse_request(request(), LIMITS, 1).generation.gamma is None  # "auto": adaptive windows


@pytest.mark.parametrize("tensors, message", [
    ({"temperature": np.float32("nan")}, "temperature must be a finite number"),
    ({"temperature": np.float32(-0.5)}, "temperature must be a finite number >= 0"),
    ({"runtime_top_p": np.float32(0.0)}, r"top_p must be in \(0, 1\]"),
    ({"runtime_top_p": np.float32(1.5)}, r"top_p must be in \(0, 1\]"),
    ({"runtime_top_k": np.int32(-1)}, "top_k must be >= 0"),
    ({"beam_width": np.int32(4)}, "'beam_width'=4 is not supported"),
    ({"return_log_probs": True}, "'return_log_probs'=True is not supported"),
    ({"lora_task_id": np.uint64(9)}, "'lora_task_id' is not supported"),
    ({"end_id": np.int32(77)}, "end_id 77 is not this pair's end token"),
    ({"num_draft_tokens": np.int32(-1)}, "num_draft_tokens must be >= 1"),
    ({"decoding_mode": b"beam"}, "unknown mode 'beam'"),
    ({"request_output_len": np.int32(100)}, "exceeds the models' limit of 63 tokens"),
    ({"input_ids": np.array([5, 100], np.int32)}, "outside the vocabulary"),
])
def test_bad_requests_are_refused_with_a_clear_message(tensors, message):
    with pytest.raises(RequestError, match=message):
        parse_request(request(**tensors), LIMITS, 1)


def test_batches_and_bad_word_lists_are_refused():
    batch = request()
    batch["input_ids"] = np.array([[1, 2], [3, 4]], dtype=np.int32)
    with pytest.raises(RequestError, match="send one prompt per request"):
        parse_request(batch, LIMITS, 1)
    bad = request()
    bad["bad_words_list"] = words.to_tensor([(3,)])[None]
    with pytest.raises(RequestError, match="bad_words is not supported"):
        parse_request(bad, LIMITS, 1)
    bad["bad_words_list"] = words.to_tensor([])[None]  # what clients send for "none"
    assert parse_request(bad, LIMITS, 1).generation.prompt_ids == (5, 6, 7)


def test_preprocessing_tokenizes_text_and_stop_words(tokenizer):
    pre = Preprocessor(tokenizer)
    out = pre({"QUERY": np.array([[b"def fib(n):"]], dtype=object), "REQUEST_OUTPUT_LEN": np.array([[9]], np.int32),
               "STOP_WORDS_DICT": np.array([[b"\n\n", b""]], dtype=object)})
    assert out["INPUT_ID"][0].tolist() == tokenizer("def fib(n):").input_ids
    assert out["REQUEST_INPUT_LEN"].tolist() == [[out["INPUT_ID"].shape[1]]]
    assert words.from_tensor(out["STOP_WORDS_IDS"][0]) == (tuple(tokenizer.encode("\n\n", add_special_tokens=False)),)
    assert words.from_tensor(out["BAD_WORDS_IDS"][0]) == ()


@pytest.mark.parametrize("query, max_tokens, message", [
    (b"", 5, "text_input is empty"),
    (b"   ", 5, "text_input is empty"),
    (b"\xff\xfeabc", 5, "not valid UTF-8"),
    (b"hello", 0, "max_tokens must be >= 1"),
])
def test_preprocessing_refuses_bad_text(tokenizer, query, max_tokens, message):
    with pytest.raises(RequestError, match=message):
        Preprocessor(tokenizer)({"QUERY": np.array([[query]], dtype=object),
                                 "REQUEST_OUTPUT_LEN": np.array([[max_tokens]], np.int32)})


def test_streamed_text_never_splits_a_utf8_character(tokenizer):
    text = "naïve café 🙂 ok"
    ids = tokenizer.encode(text)
    pieces, previous = [], 0
    for end in range(1, len(ids) + 1):  # one token per response, as a stream would send them
        pieces.append(text_delta(tokenizer, ids[:end], previous, final=end == len(ids)))
        previous = end
        assert "\ufffd" not in pieces[-1]
    assert "".join(pieces) == text


def test_postprocessing_emits_only_the_new_text(tokenizer):
    post = Postprocessor(tokenizer)
    ids = tokenizer.encode("hello world, again")

    def run(previous, final):
        return post({"TOKENS_BATCH": np.array([[ids]]), "SEQUENCE_LENGTH": np.array([[len(ids)]]),
                     "PREVIOUS_LENGTH": np.array([[previous]]), "IS_FINAL": np.array([[final]])})["OUTPUT"][0, 0]

    assert run(0, True).decode() == "hello world, again"
    assert run(2, False).decode() == tokenizer.decode(ids)[len(tokenizer.decode(ids[:2])):]


def test_repository_is_filled_from_an_engine_directory(smollm2_engines, tmp_path):
    from conftest import REPO

    out = build_repository(REPO / "triton_repo", tmp_path / "repo",
                           values_for_engines(smollm2_engines, apply_chat_template="true"))
    pearl_config = (out / "pearl" / "config.pbtxt").read_text()
    assert f'string_value: "{smollm2_engines.resolve()}"' in pearl_config and "${" not in pearl_config
    assert 'key: "apply_chat_template" value: { string_value: "true" }' in (out / "preprocessing" /
                                                                          "config.pbtxt").read_text()
    assert (out / "ensemble" / "1").is_dir() and (out / "pearl" / "1" / "model.py").exists()
    with pytest.raises(RepositoryError, match="unknown template values"):
        values_for_engines(smollm2_engines, colour="red")
    with pytest.raises(RepositoryError, match="no value for missing"):
        fill_text("a ${missing} b", {}, "x.pbtxt")
    assert template_overrides(["spare_world=true", "request_timeout_s=a=b"]) == {
        "spare_world": "true", "request_timeout_s": "a=b"}  # the value keeps any further "="
    with pytest.raises(RepositoryError, match="KEY=VALUE"):
        template_overrides(["spare_world"])


class CountingTokenizer:
    """A tokenizer whose decode counts the tokens it is given (the cost of streaming a text)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kwargs) -> str:
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


def test_a_long_stream_is_decoded_incrementally_and_exactly(tokenizer):
    """2,000 tokens streamed a few at a time (multi-byte characters, code, spaces): the pieces are the whole
    decode, and the tokens decoded grow linearly with the length (a window per response, not the output)."""
    import random

    from pearl.text import CONTEXT_TOKENS, IncrementalDetokenizer

    text = " ".join(f"naïve café 🙂 def f_{i}(x):\n    return x ** {i}  # ünïcödé 漢字" for i in range(200))
    ids = tokenizer.encode(text)[:2000]
    assert len(ids) == 2000
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    counting = CountingTokenizer(tokenizer)
    detok, pieces, rng, end, responses = IncrementalDetokenizer(counting), [], random.Random(0), 0, 0
    while end < len(ids):
        step = rng.randint(1, 8)
        pieces.append(detok.add(ids[end:end + step]))
        end, responses = end + step, responses + 1
    pieces.append(detok.flush())
    assert "".join(pieces) == expected
    assert counting.decoded <= 2 * (len(ids) + 2 * CONTEXT_TOKENS * (responses + 1))
    stateless, previous = [], 0  # the postprocessing model's way: each response alone
    for stop in range(7, len(ids) + 7, 7):
        stateless.append(text_delta(tokenizer, ids[:stop], previous, final=stop >= len(ids)))
        previous = stop
    assert "".join(stateless) == expected
