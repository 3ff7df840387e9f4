# pearl-serve: set up, test, run. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GENAI_VENV ?= .venv-genai
GENAI_PERF := $(GENAI_VENV)/bin/genai-perf
AIPERF_VENV ?= .venv-aiperf
AIPERF := $(AIPERF_VENV)/bin/aiperf
PIP := $(PY) -m pip --disable-pip-version-check

GPU_VENV ?= .venv-gpu
# `make engines` and the targets after it set up the venv they run in: the GPU one when VENV=$(GPU_VENV)
SETUP := $(if $(filter $(GPU_VENV),$(VENV)),setup-gpu,setup)

PAIR ?= qwen2.5-coder-0.5b-1.5b
ENGINES_DIR ?= engines
HOST ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
OPENAI_PORT ?= 9000
PORTS = --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

.PHONY: help setup setup-gpu setup-llama-cpp gpu-check genai-perf aiperf test test-fast engines serve demo bench bench-concurrency perf soak clean

help:
	@echo "make setup   create $(VENV) with the pinned dependencies and the pearl package"
	@echo "make setup-gpu  on a GPU host, in the pinned TensorRT-LLM container: $(GPU_VENV) over the container's"
	@echo "             packages, mpi4py built against its Open MPI; then pass VENV=$(GPU_VENV) to the targets below"
	@echo "make setup-llama-cpp"
	@echo "             add llama-cpp-python to $(VENV) (compiled here, ~20 min): the llama_cpp backend, a GGUF draft"
	@echo "make gpu-check  scripts/gpu_check.sh: torch on CUDA (and TensorRT-LLM if importable), JSON results"
	@echo "make genai-perf"
	@echo "             create $(GENAI_VENV) with genai-perf (its own pins: requirements-genai-perf.txt)"
	@echo "make aiperf"
	@echo "             create $(AIPERF_VENV) with AIPerf (its own pins: requirements-aiperf.txt)"
	@echo "make test    run the test suite (sets up the venvs it needs)"
	@echo "make test-fast"
	@echo "             the fast lane (< 2 min): no MPI processes, no Triton, no real weights, one case a check"
	@echo "make engines [PAIR=name] [DRY_RUN=1] [FORCE=1]"
	@echo "             build a pair's engines into $(ENGINES_DIR)/<pair> (pairs: build/configs/*.yaml;"
	@echo "             default $(PAIR)); DRY_RUN=1 prints the per-device build plan only"
	@echo "make serve [PAIR=name] [HOST=127.0.0.1] [HTTP_PORT=8000 GRPC_PORT=8001 METRICS_PORT=8002] [OPENAI_PORT=9000]"
	@echo "             run Triton with the pair's ensemble, and the OpenAI-compatible API on OPENAI_PORT (0: off),"
	@echo "             until Ctrl-C (builds the engines first)"
	@echo "make demo    setup, engines, server, one streamed request with statistics, stop"
	@echo "make bench [PAIR=name] [BENCH_ARGS='--per-class 8 --max-tokens 128 ...']"
	@echo "             ar / sd / pearl / assisted generation / llama.cpp per prompt class -> results/bench/<pair>"
	@echo "make bench-concurrency [PAIR=name] [CONCURRENCY_ARGS='--concurrency 1,2,4,8,16 --max-tokens 64']"
	@echo "             the batched LLM's tokens/s and latency per concurrency -> results/concurrency/<pair>"
	@echo "make perf [PAIR=name] [PERF_ARGS='--concurrency 1,2,4,8,16 ...']"
	@echo "             perf_analyzer, genai-perf and AIPerf (OpenAI API) against the server -> results/perf/<pair>"
	@echo "make soak [PAIR=name] [SOAK_ARGS='--minutes 10 --concurrency 8 --kill-every 60']"
	@echo "             long perf_analyzer load: errors, tokens/s and memory over time; --kill-every: a rank"
	@echo "             killed that often, lost requests and resume pauses -> results/soak/<pair>;"
	@echo "             --set spare_world=true: a spare world takes over from a dead one"
	@echo "make clean   remove the venv and caches"

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

setup-llama-cpp: $(VENV)/.installed-llama-cpp

$(VENV)/.installed-llama-cpp: requirements-llama-cpp.txt $(VENV)/.installed
	@echo "llama-cpp-python: compiling llama.cpp (~20 min on 2 cores the first time; pip keeps the wheel)"
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PIP) install -q -r requirements-llama-cpp.txt
	touch $@

setup-gpu: $(GPU_VENV)/.installed-gpu

GPU_SETUP_INPUTS = requirements-gpu.txt pyproject.toml runtime/pearl/backends/trtllm_pin.py scripts/setup_gpu.sh
$(GPU_VENV)/.installed-gpu: $(GPU_SETUP_INPUTS)
	GPU_VENV=$(GPU_VENV) PYTHON=$(PYTHON) $(if $(MPI_HOME),MPI_HOME=$(MPI_HOME)) scripts/setup_gpu.sh

gpu-check: $(SETUP)
	PYTHON=$(PY) scripts/gpu_check.sh

genai-perf: $(GENAI_VENV)/.installed

$(GENAI_VENV)/.installed: requirements-genai-perf.txt
	$(PYTHON) -m venv $(GENAI_VENV)
	$(GENAI_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements-genai-perf.txt
	touch $@

aiperf: $(AIPERF_VENV)/.installed

$(AIPERF_VENV)/.installed: requirements-aiperf.txt
	$(PYTHON) -m venv $(AIPERF_VENV)
	$(AIPERF_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements-aiperf.txt
	touch $@

test: setup setup-llama-cpp genai-perf aiperf
	PEARL_GENAI_PERF=$(GENAI_PERF) PEARL_AIPERF=$(AIPERF) $(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -q -m "not mpi and not triton and not real_weights and not slow"

engines: $(SETUP)
	$(PY) -m pearl_build $(PAIR) --engines-dir $(ENGINES_DIR) $(if $(DRY_RUN),--dry-run) $(if $(FORCE),--force) $(if $(REPROFILE),--reprofile)

serve: engines
	$(PY) scripts/serve.py --engines $(ENGINES_DIR)/$(PAIR) --host $(HOST) $(PORTS) --openai-port $(OPENAI_PORT)

demo: engines
	$(PY) scripts/demo.py --engines $(ENGINES_DIR)/$(PAIR) $(PORTS)

bench: engines
	$(PY) scripts/bench.py --engines $(ENGINES_DIR)/$(PAIR) $(BENCH_ARGS)

bench-concurrency: engines
	$(PY) scripts/bench_concurrency.py --engines $(ENGINES_DIR)/$(PAIR) $(CONCURRENCY_ARGS)

perf: engines genai-perf aiperf
	$(PY) scripts/perf.py --engines $(ENGINES_DIR)/$(PAIR) $(PORTS) --genai-perf $(GENAI_PERF) --aiperf $(AIPERF) \
		--openai-port $(OPENAI_PORT) $(PERF_ARGS)

soak: engines
	$(PY) scripts/soak.py --engines $(ENGINES_DIR)/$(PAIR) $(PORTS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(GENAI_VENV) $(AIPERF_VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
