"""Benchmarks: the paper's comparison at the runtime level (``make bench``) and load tests of the server
(``make perf``). Both write JSON, Markdown and PNG results under ``results/``."""
