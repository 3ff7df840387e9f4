"""Benchmarks, a tool beside the runtime: the paper's comparison at the runtime level (``make bench``), the
batching sweep (``make bench-concurrency``), load tests of the server (``make perf``, ``make soak``) and the
GPU host check. They write JSON, Markdown and PNG results under ``results/``."""
