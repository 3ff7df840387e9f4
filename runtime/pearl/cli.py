"""``pearl`` (the console script, also ``python -m pearl``): one command line for everything a user runs.

    pearl generate | serve | demo | client | fill-template | bench | bench-concurrency | perf | soak | gpu-check

Each command lives with its code (``COMMANDS``: module and function, imported only when it runs, so
``pearl generate`` loads no server client and ``pearl client`` no torch); ``scripts/`` and ``make`` call it.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> ("module:function" taking argv and returning an exit status, one line of help)
    "generate": ("pearl.generate:main", "run prompts through a pair, no server"),
    "serve": ("pearl.serving.commands:serve", "run Triton with a pair's ensemble until Ctrl-C"),
    "demo": ("pearl.serving.commands:demo", "start Triton, stream one answer with statistics, stop"),
    "client": ("pearl.serving.commands:client", "send a prompt to a running server and print the answer"),
    "fill-template": ("pearl.serving.commands:fill_template", "fill the Triton model repository's templates"),
    "bench": ("pearl_bench.commands:bench", "ar / sd / pearl / assisted generation / llama.cpp per prompt class"),
    "bench-concurrency": ("pearl_bench.commands:bench_concurrency", "the batched LLM at a set of concurrencies"),
    "perf": ("pearl_bench.commands:perf", "perf_analyzer and genai-perf against the served ensemble"),
    "soak": ("pearl_bench.commands:soak", "a long perf_analyzer load: errors, tokens/s and memory over time"),
    "gpu-check": ("pearl_bench.gpu_check:main", "the prepared check for a host with a GPU"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: pearl <command> [options]   (pearl <command> --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(usage(), file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    module, function = COMMANDS[argv[0]][0].split(":")
    sys.exit(getattr(importlib.import_module(module), function)(argv[1:]))
