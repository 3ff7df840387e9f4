"""A contract check of the TensorRT-LLM backend against the pinned release's binding declarations (no GPU, no
TensorRT-LLM): ``declarations`` lists them, ``standin`` builds a ``tensorrt_llm`` module from that list."""
