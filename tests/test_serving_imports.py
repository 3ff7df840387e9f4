"""The Triton side stays light: what the model repository's python models import loads neither torch nor MPI
(a stub that needs neither starts fast, and its process never initialises MPI beside the world host's)."""
import ast
import json
import subprocess
import sys

from conftest import REPO


def pearl_modules_imported_by_the_triton_models() -> set[str]:
    modules = set()
    for path in (REPO / "triton_repo").glob("*/1/model.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pearl"):
                modules.add(node.module)
    return modules


def test_the_triton_models_import_neither_torch_nor_mpi():
    modules = pearl_modules_imported_by_the_triton_models()
    assert {"pearl.serving.generation", "pearl.tokenizers", "pearl.schema"} <= modules
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in sorted(modules)) +
            "print(json.dumps(sorted(m for m in ('torch', 'mpi4py') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
