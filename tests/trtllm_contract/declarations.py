"""The Python bindings of ``tensorrt_llm.bindings.executor`` that pearl-serve touches, as TensorRT-LLM declares them:
class names, constructor keywords (in order, which are required, which keyword-only), method names with their
arguments, readable attributes, enum values. A contract check's data, not TensorRT-LLM's code.

Transcribed from the pybind11 declarations (``py::class_`` / ``py::init`` + ``py::arg`` / ``py::kw_only`` /
``.def`` / ``def_property`` / ``def_readwrite`` / ``py::enum_``) of the files below, as stored in the code index
we read them from. The index holds no copy at the pinned tag's commit (``trtllm_pin.GIT_COMMIT``); these are the
copies read, by file (commit):
- cpp/tensorrt_llm/pybind/executor/request.cpp (007a7508b8f68de24a065ad3b72bb2128ee3ebf5)
- cpp/tensorrt_llm/pybind/executor/executor.cpp (03961722f65265573cad179baca3bc5fe8c03f76)
- cpp/tensorrt_llm/pybind/executor/executorConfig.cpp (05843b0a704070599c938655ada137b66143a445)
- cpp/tensorrt_llm/pybind/executor/bindings.cpp (enums; several stored copies, all alike for these values)
Most names pearl-serve passes are also used, with these meanings, by tensorrtllm_backend's Python model at its
tag v0.19.0 (all_models/inflight_batcher_llm/tensorrt_llm/1/model.py), older than the pin; the README lists
which rest on these copies alone (SamplingConfig's ``seed``: v0.19 still took ``random_seed``, removed by
NVIDIA/TensorRT-LLM pull request #3732 in April 2025). The nanobind twins (cpp/tensorrt_llm/nanobind/executor/)
declare the same names for Executor and ParallelConfig.
Lists cover whole constructors of the classes we build, so a keyword the copies read lack fails the test.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sig:
    """One overload: ``params`` positional-or-keyword in order (the first ``required`` without a default), then
    ``kw_only`` keyword-only ones (all with defaults in what we declare)."""

    params: tuple[str, ...] = ()
    required: int = 0
    kw_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cls:
    inits: tuple[Sig, ...]
    methods: dict[str, tuple[Sig, ...]] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()  # def_property / def_readwrite / def_property_readonly names


def _defaults(*names: str) -> Sig:
    return Sig(names)


SAMPLING_CONFIG_KW = ("top_k", "top_p", "top_p_min", "top_p_reset_ids", "top_p_decay", "seed", "temperature",
                      "min_tokens", "beam_search_diversity_rate", "repetition_penalty", "presence_penalty",
                      "frequency_penalty", "prompt_ignore_length", "length_penalty", "early_stopping",
                      "no_repeat_ngram_size", "num_return_sequences", "min_p", "beam_width_array")
OUTPUT_CONFIG = ("return_log_probs", "return_context_logits", "return_generation_logits", "exclude_input_from_output",
                 "return_encoder_output", "return_perf_metrics", "additional_model_outputs")
REQUEST_KW = ("streaming", "sampling_config", "output_config", "end_id", "pad_id", "position_ids", "bad_words",
              "stop_words", "embedding_bias", "external_draft_tokens_config", "prompt_tuning_config",
              "multimodal_input", "multimodal_embedding", "mrope_config", "lora_config", "lookahead_config",
              "kv_cache_retention_config", "logits_post_processor_name", "logits_post_processor",
              "encoder_input_token_ids", "client_id", "return_all_generated_tokens", "priority", "type",
              "context_phase_params", "encoder_input_features", "encoder_output_length", "cross_attention_mask",
              "num_return_sequences", "eagle_config", "skip_cross_attn_blocks", "guided_decoding_params",
              "language_adapter_uid", "allotted_time_ms", "cache_salt_id")
KV_CACHE_CONFIG = ("enable_block_reuse", "max_tokens", "max_attention_window", "sink_token_length",
                   "free_gpu_memory_fraction", "host_cache_size", "onboard_blocks", "cross_kv_cache_fraction",
                   "secondary_offload_min_priority", "event_buffer_max_size")
KV_CACHE_CONFIG_KW = ("enable_partial_reuse", "copy_on_partial_reuse", "use_uvm",
                      "attention_dp_events_gather_period_ms", "runtime_defaults")
PARALLEL_CONFIG = ("communication_type", "communication_mode", "device_ids", "participant_ids", "orchestrator_config",
                   "num_nodes")
EXECUTOR_CONFIG = ("max_beam_width", "scheduler_config", "kv_cache_config", "enable_chunked_context",
                   "normalize_log_probs", "iter_stats_max_iterations", "request_stats_max_iterations", "batching_type",
                   "max_batch_size", "max_num_tokens", "parallel_config", "peft_cache_config",
                   "logits_post_processor_config", "decoding_config", "use_gpu_direct_storage", "gpu_weights_percent",
                   "max_queue_size", "extended_runtime_perf_knob_config", "debug_config", "recv_poll_period_ms",
                   "max_seq_idle_microseconds", "spec_dec_config", "guided_decoding_config",
                   "additional_model_outputs", "cache_transceiver_config", "gather_generation_logits",
                   "mm_embedding_offloading", "enable_trt_overlap", "fail_fast_on_attention_window_too_large")
REQUEST_ATTRIBUTES = ("input_token_ids", "max_tokens", "streaming", "sampling_config", "output_config", "end_id",
                      "pad_id", "position_ids", "bad_words", "stop_words", "embedding_bias",
                      "external_draft_tokens_config", "prompt_tuning_config", "multimodal_input",
                      "multimodal_embedding", "mrope_config", "lora_config", "lookahead_config",
                      "kv_cache_retention_config", "logits_post_processor_name", "logits_post_processor",
                      "encoder_input_token_ids", "client_id", "return_all_generated_tokens", "request_type",
                      "encoder_input_features", "cross_attention_mask", "eagle_config", "skip_cross_attn_blocks",
                      "guided_decoding_params", "allotted_time_ms", "cache_salt_id", "context_phase_params")
RESULT = ("is_final", "output_token_ids", "cum_log_probs", "log_probs", "context_logits", "generation_logits",
          "spec_dec_fast_logits_info", "encoder_output", "finish_reasons", "sequence_index", "is_sequence_final",
          "decoding_iter", "avg_decoded_tokens_per_iter", "context_phase_params", "request_perf_metrics",
          "additional_outputs")

CLASSES: dict[str, Cls] = {
    # request.cpp
    "SamplingConfig": Cls((Sig(("beam_width",), 0, SAMPLING_CONFIG_KW),),
                          attributes=("beam_width", *SAMPLING_CONFIG_KW)),
    "OutputConfig": Cls((_defaults(*OUTPUT_CONFIG),), attributes=OUTPUT_CONFIG),
    "ExternalDraftTokensConfig": Cls((Sig(("tokens", "logits", "acceptance_threshold", "fast_logits"), 1),),
                                     attributes=("tokens", "logits", "acceptance_threshold", "fast_logits")),
    "Request": Cls((Sig(("input_token_ids", "max_tokens"), 2, REQUEST_KW),), attributes=REQUEST_ATTRIBUTES),
    "Result": Cls((Sig(),), attributes=RESULT),
    "Response": Cls((Sig(("request_id", "error_msg", "client_id"), 2), Sig(("request_id", "result", "client_id"), 2)),
                    methods={"has_error": (Sig(),), "clear_context_logits": (Sig(),),
                             "clear_generation_logits": (Sig(),)},
                    attributes=("request_id", "client_id", "error_msg", "result")),
    # executorConfig.cpp
    "KvCacheConfig": Cls((Sig(KV_CACHE_CONFIG, 0, KV_CACHE_CONFIG_KW),),  # runtime_defaults: no attribute
                         attributes=(*KV_CACHE_CONFIG, *KV_CACHE_CONFIG_KW[:-1])),
    "OrchestratorConfig": Cls((_defaults("is_orchestrator", "worker_executable_path", "orch_leader_comm",
                                         "spawn_processes"),),
                              attributes=("is_orchestrator", "worker_executable_path", "orch_leader_comm",
                                          "spawn_processes")),
    "ParallelConfig": Cls((_defaults(*PARALLEL_CONFIG),), attributes=PARALLEL_CONFIG),
    "ExecutorConfig": Cls((_defaults(*EXECUTOR_CONFIG),), attributes=EXECUTOR_CONFIG),
    # executor.cpp
    "Executor": Cls(
        (Sig(("model_path", "model_type", "executor_config"), 3),
         Sig(("encoder_model_path", "decoder_model_path", "model_type", "executor_config"), 4),
         Sig(("engine_buffer", "json_config_str", "model_type", "executor_config"), 4),
         Sig(("encoder_engine_buffer", "encoder_json_config_str", "decoder_engine_buffer", "decoder_json_config_str",
              "model_type", "executor_config"), 6)),
        methods={"shutdown": (Sig(),), "enqueue_request": (Sig(("request",), 1),),
                 "enqueue_requests": (Sig(("requests",), 1),),
                 "await_responses": (Sig(("timeout",)), Sig(("id", "timeout"), 1), Sig(("ids", "timeout"), 1)),
                 "get_num_responses_ready": (Sig(("id",)),), "cancel_request": (Sig(("id",)),),
                 "get_latest_iteration_stats": (Sig(),), "get_latest_request_stats": (Sig(),),
                 "can_enqueue_requests": (Sig(),)}),
}

# bindings.cpp (ModelType, CommunicationType, CommunicationMode), request.cpp (FinishReason)
ENUMS: dict[str, tuple[str, ...]] = {
    "ModelType": ("DECODER_ONLY", "ENCODER_ONLY", "ENCODER_DECODER"),
    "CommunicationType": ("MPI",),
    "CommunicationMode": ("LEADER", "ORCHESTRATOR"),
    "FinishReason": ("NOT_FINISHED", "END_ID", "STOP_WORDS", "LENGTH", "TIMED_OUT", "CANCELLED"),
}
