#!/usr/bin/env bash
# `make setup-gpu`: a venv for GPU hosts, inside the TensorRT-LLM container the pin names
# (runtime/pearl/backends/trtllm_pin.py). It sees the container's packages, builds mpi4py from source against the
# container's Open MPI (never the mpich wheel: TensorRT-LLM links Open MPI, and ranks of another MPI would each see
# a world of one), adds requirements-gpu.txt under the container's versions, and checks the result.
# Environment: GPU_VENV (default .venv-gpu), MPI_HOME (default: the pin's CONTAINER_MPI_HOME), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
GPU_VENV=${GPU_VENV:-.venv-gpu}
pin() { "$PYTHON" -c "import runpy; print(runpy.run_path('runtime/pearl/backends/trtllm_pin.py')['$1'])"; }
MPI_HOME=${MPI_HOME:-$(pin CONTAINER_MPI_HOME)}

echo "[setup-gpu] pinned: $(pin VERSION) in $(pin CONTAINER)"
found=$("$PYTHON" -c "import tensorrt_llm; print(tensorrt_llm.__version__)" 2>/dev/null | tail -1) || {
    echo "[setup-gpu] error: $PYTHON cannot import tensorrt_llm; run this inside $(pin CONTAINER)" >&2; exit 2; }
"$PYTHON" -c "import runpy; runpy.run_path('runtime/pearl/backends/trtllm_pin.py')['check_version']('$found')"
if ! "$MPI_HOME/bin/mpiexec" --version 2>&1 | grep -qE "Open MPI|OpenRTE"; then
    echo "[setup-gpu] error: $MPI_HOME/bin/mpiexec is not Open MPI's; set MPI_HOME to the container's Open MPI" >&2
    exit 2
fi

"$PYTHON" -m venv --system-site-packages "$GPU_VENV"
PIP=("$GPU_VENV/bin/python" -m pip --disable-pip-version-check)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# every container package at its version (`pip list` names wheels installed from files too, unlike `pip freeze`)
"$PYTHON" -m pip list --format=freeze --exclude-editable | grep -v -i "^mpi4py==" > "$constraints" || true
MPICC="$MPI_HOME/bin/mpicc" "${PIP[@]}" install -q --no-cache-dir --no-binary=mpi4py --ignore-installed \
    "mpi4py==$(pin MPI4PY_VERSION)"
"${PIP[@]}" install -q -c "$constraints" -r requirements-gpu.txt
"${PIP[@]}" install -q --no-deps -e .

"$GPU_VENV/bin/python" - <<'PY'
from mpi4py import MPI
library = MPI.Get_library_version()
assert "Open MPI" in library, f"mpi4py is linked to {library!r}, not Open MPI"
import runpy, tensorrt_llm
runpy.run_path("runtime/pearl/backends/trtllm_pin.py")["check_version"](tensorrt_llm.__version__)
print(f"[setup-gpu] ok: tensorrt_llm {tensorrt_llm.__version__}, mpi4py on {library.splitlines()[0]}")
PY
touch "$GPU_VENV/.installed-gpu"
