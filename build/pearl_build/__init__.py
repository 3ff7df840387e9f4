"""Engine building (``make engines``): pair configs, model sources, torch and TensorRT-LLM engines, profiling."""
