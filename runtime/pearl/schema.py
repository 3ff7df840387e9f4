"""The fields that cross the boundaries, declared once: a request's statistics (what the target counts, the
figures derived from them, which of them Triton returns and Prometheus counts) and the generation inputs the
ensemble passes through to the ``pearl`` model. Everything else derives from here: the STATS message
(``pearl.ranks.protocol``), ``RequestStats``, the Triton outputs and the repeated ``config.pbtxt`` blocks
(filled in by ``pearl.serving.repository``), the metrics, the client and the benchmarks.

No torch, no MPI: the Triton-side modules import it.
"""
from __future__ import annotations

from dataclasses import dataclass

# The target's counters of one request, in the STATS message's order (times: seconds on the target rank).
COUNTERS: tuple[tuple[str, type, str], ...] = (
    ("generated_tokens", int, "output tokens"),
    ("target_forwards", int, "target model calls (a prefill counts as one)"),
    ("draft_forwards", int, "draft model calls"),
    ("draft_tokens", int, "draft tokens proposed"),
    ("accepted_draft_tokens", int, "draft tokens that became output"),
    ("accepted_runs", int, "runs of accepted tokens between rejections (PEARL's mean accepted length)"),
    ("rounds", int, "draft/verify exchanges (AR: decode steps)"),
    ("drafted_rounds", int, "rounds in which the draft proposed a window"),
    ("batched_sequences", int, "sum over its rounds of the sequences in the round (its own included)"),
    ("target_forward_s", float, "time inside target forwards"),
    ("target_wait_s", float, "time the target waited for the draft"),
    ("target_busy_s", float, "the whole request on the target, from receiving it to the last token"),
    ("prompt_tokens", int, "prompt tokens (the chat template's included)"),
    ("checked_draft_tokens", int, "draft tokens a verification checked (vLLM's num_draft_tokens; PEARL drops the "
                                  "rest of a window unchecked after a rejection, so at most draft_tokens)"),
    ("sd_rounds", int, "drafted rounds run as vanilla SD (draft, then verify on every core): an SD request's all, "
                       "an adaptive PEARL request's where the costs favoured them (pearl.speculation)"),
)
COUNTER_NAMES = tuple(name for name, _, _ in COUNTERS)

# After the counters, the STATS message carries the request's acceptance histogram (vLLM's and AIPerf's
# per-request figure): entry j counts the verifications (rounds that checked draft tokens) that accepted
# exactly j of them; its length is the longest window checked + 1 (at least 1). The number of verifications
# that accepted the draft token at window position i (vLLM's per-position counter) is the sum of entries i+1...
ACCEPTANCE_HISTOGRAM = "acceptance_histogram"


@dataclass(frozen=True)
class Output:
    """A statistic every response carries (zero until the final one): Triton output ``name`` (TensorRT-LLM's
    where it has one), from the ``RequestStats`` attribute ``stat``."""

    name: str
    triton_type: str  # TYPE_INT32 | TYPE_FP32
    stat: str
    vector: bool = False  # a tuple of numbers (dims [ -1 ]) rather than one

    @property
    def numpy_type(self) -> str:
        return {"TYPE_INT32": "int32", "TYPE_FP32": "float32"}[self.triton_type]


OUTPUTS = (
    Output("total_draft_tokens", "TYPE_INT32", "draft_tokens"),
    Output("total_accepted_draft_tokens", "TYPE_INT32", "accepted_draft_tokens"),
    Output("acceptance_rate", "TYPE_FP32", "acceptance_rate"),
    Output("target_forwards", "TYPE_INT32", "target_forwards"),
    Output("mean_accepted_length", "TYPE_FP32", "mean_accepted_length"),
    Output("drafted_rounds", "TYPE_INT32", "drafted_rounds"),
    Output("mean_gamma", "TYPE_FP32", "mean_gamma"),
    Output("prompt_tokens", "TYPE_INT32", "prompt_tokens"),
    Output("generated_tokens", "TYPE_INT32", "generated_tokens"),
    Output("checked_draft_tokens", "TYPE_INT32", "checked_draft_tokens"),
    Output("acceptance_histogram", "TYPE_INT32", "acceptance_histogram", vector=True),
    Output("mean_acceptance_length", "TYPE_FP32", "mean_acceptance_length"),
    Output("draft_acceptance_rate", "TYPE_FP32", "draft_acceptance_rate"),
    Output("resumed", "TYPE_INT32", "resumed"),  # times resent to a new world after a rank died
)


@dataclass(frozen=True)
class Metric:
    """A Prometheus metric of the ``pearl`` model: a counter adds ``stat`` of each finished request, a gauge
    is set to it; a per-position counter adds each entry of the tuple ``stat`` to the counter labelled with
    its ``position`` (0: the first draft token of a window)."""

    name: str
    help: str
    stat: str
    gauge: bool = False
    per_position: bool = False


METRICS = (
    Metric("pearl_generated_tokens_total", "Output tokens generated", "generated_tokens"),
    Metric("pearl_draft_tokens_total", "Draft tokens proposed", "draft_tokens"),
    Metric("pearl_accepted_draft_tokens_total", "Draft tokens accepted", "accepted_draft_tokens"),
    Metric("pearl_target_forwards_total", "Target model forward passes", "target_forwards"),
    Metric("pearl_rounds_total", "Rounds (draft/verify exchanges, or decode steps)", "rounds"),
    Metric("pearl_drafted_rounds_total", "Rounds in which the draft proposed a window", "drafted_rounds"),
    Metric("pearl_sd_rounds_total", "Drafted rounds run as vanilla SD (the verify after the drafting)", "sd_rounds"),
    Metric("pearl_requests_total", "Requests completed", "requests"),
    Metric("pearl_tokens_per_second", "Output tokens/s of the last request", "tokens_per_s", gauge=True),
    Metric("pearl_prompt_tokens_total", "Prompt tokens processed", "prompt_tokens"),
    # vLLM's speculative-decoding counters, with its meanings (docs/clients.md): mean acceptance length
    # = 1 + accepted / drafts, acceptance rate = accepted / draft tokens, per position = accepted_per_pos / drafts
    Metric("pearl_spec_decode_num_drafts_total", "Verifications that checked draft tokens (vLLM's num_drafts)",
           "drafted_rounds"),
    Metric("pearl_spec_decode_num_draft_tokens_total", "Draft tokens checked (vLLM's num_draft_tokens)",
           "checked_draft_tokens"),
    Metric("pearl_spec_decode_num_accepted_tokens_total", "Draft tokens accepted (vLLM's num_accepted_tokens)",
           "accepted_draft_tokens"),
    Metric("pearl_spec_decode_num_accepted_tokens_per_pos_total",
           "Verifications that accepted the draft token at this window position (vLLM's per-position counter)",
           "accepted_per_position", per_position=True),
    Metric("pearl_resumed_total", "Times a request was resumed in a new MPI world after a rank died", "resumed"),
)


@dataclass(frozen=True)
class Input:
    """An optional generation input the ensemble takes as ``name`` and hands the ``pearl`` model as
    ``pearl_name`` (TensorRT-LLM's two models name some of them differently)."""

    name: str
    triton_type: str
    pearl_name: str = ""

    @property
    def model_name(self) -> str:
        return self.pearl_name or self.name


# Sampling and decoding inputs; then TensorRT-LLM's that PEARL refuses unless neutral (pearl.serving.inputs).
PASSED_INPUTS = (
    Input("exclude_input_in_output", "TYPE_BOOL"),
    Input("temperature", "TYPE_FP32"),
    Input("top_k", "TYPE_INT32", "runtime_top_k"),
    Input("top_p", "TYPE_FP32", "runtime_top_p"),
    Input("seed", "TYPE_UINT64"),
    Input("num_draft_tokens", "TYPE_INT32"),
    Input("decoding_mode", "TYPE_STRING"),
    Input("beam_width", "TYPE_INT32"),
    Input("num_return_sequences", "TYPE_INT32"),
    Input("length_penalty", "TYPE_FP32", "len_penalty"),
    Input("repetition_penalty", "TYPE_FP32"),
    Input("presence_penalty", "TYPE_FP32"),
    Input("frequency_penalty", "TYPE_FP32"),
    Input("min_tokens", "TYPE_INT32"),
    Input("return_log_probs", "TYPE_BOOL"),
    Input("return_context_logits", "TYPE_BOOL"),
    Input("return_generation_logits", "TYPE_BOOL"),
    Input("lora_task_id", "TYPE_UINT64"),
    Input("prompt_vocab_size", "TYPE_INT32"),
)


def pbtxt_blocks() -> dict[str, str]:
    """The repeated config.pbtxt lines, as template values: the ensemble's and the pearl model's optional
    inputs, the statistics outputs, and the ensemble's maps for its pearl step."""
    def tensor(name: str, triton_type: str, optional: bool, dims: str = "1") -> str:
        return f'  {{ name: "{name}" data_type: {triton_type} dims: [ {dims} ]{" optional: true" if optional else ""} }}'

    return {
        "passed_inputs": ",\n".join(tensor(i.name, i.triton_type, True) for i in PASSED_INPUTS),
        "pearl_passed_inputs": ",\n".join(tensor(i.model_name, i.triton_type, True) for i in PASSED_INPUTS),
        "stats_outputs": ",\n".join(tensor(o.name, o.triton_type, False, "-1" if o.vector else "1")
                                     for o in OUTPUTS),
        "pearl_input_map": "\n".join(f'      input_map {{ key: "{i.model_name}" value: "{i.name}" }}'
                                     for i in PASSED_INPUTS),
        "stats_output_map": "\n".join(f'      output_map {{ key: "{o.name}" value: "{o.name}" }}' for o in OUTPUTS),
    }
