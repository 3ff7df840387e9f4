"""Where a checkout keeps its things: the Triton model repository templates, the cache (sources, the filled
repositories, the server's log) and benchmark results. The commands take each as a default, never as the
only choice (``--cache-dir``, ``--out``, ``--templates``)."""
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # runtime/pearl/layout.py -> the checkout
TRITON_TEMPLATES = CHECKOUT / "triton_repo"
CACHE_DIR = CHECKOUT / ".cache" / "pearl"
RESULTS_DIR = CHECKOUT / "results"
