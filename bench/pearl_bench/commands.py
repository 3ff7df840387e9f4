"""The benchmark commands of ``pearl``: ``bench`` (the methods side by side per prompt class),
``bench-concurrency`` (the batched LLM), ``perf`` (perf_analyzer and genai-perf against the server) and
``soak`` (a long load). Each writes JSON, Markdown and PNG results under ``results/``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pearl.layout import CACHE_DIR, RESULTS_DIR, TRITON_TEMPLATES
from pearl_bench.prompts import CLASSES, LONG, from_jsonl, humaneval, mixed


def _served(engines: Path, cache_dir: Path, template_values: list[str] = ()):
    """The filled model repository of a pair's engines, for a server to load; ``template_values``: KEY=VALUE
    overrides, as ``pearl serve --set`` takes them."""
    from pearl.serving.repository import build_repository, template_overrides, values_for_engines
    return build_repository(TRITON_TEMPLATES, cache_dir / "triton_repo" / engines.resolve().name,
                            values_for_engines(engines, **template_overrides(template_values)))


def bench(argv: list[str] | None = None) -> int:
    """``make bench``: PEARL against ar, sd, transformers' assisted generation and llama.cpp, per prompt class.

Prompts: HumanEval plus the committed mixed set (chat, math, translation, summarisation), ``--per-class`` of
each. Writes records.jsonl (resumable), summary.json, summary.md and speedup.png to --out."""
    from pearl_bench import report
    from pearl_bench.draft_step import draft_steps, lines
    from pearl_bench.runner import BenchConfig, BenchRun

    parser = argparse.ArgumentParser(prog="pearl bench", description=bench.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory")
    parser.add_argument("--per-class", type=int, default=4, help="prompts of each class (default 4)")
    parser.add_argument("--classes", default=",".join(CLASSES),
                        help=f"of {', '.join(CLASSES)}, and {LONG} (opt-in: ~1000-token prompts, slow to prefill)")
    parser.add_argument("--prompts-file", type=Path, help="a JSONL file of {\"prompt\", \"class\"?, \"chat\"?} instead")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--gammas", default="2,3,4", help="the fixed windows swept for sd, pearl, llama.cpp")
    parser.add_argument("--sweep-per-class", type=int, default=1, help="prompts of each class the sweep runs on")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp (built on first use)")
    parser.add_argument("--no-draft-step", action="store_true", help="skip timing the draft's step variants")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--out", type=Path, help="results folder (default results/bench/<pair>)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier records instead of resuming")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()  # 4.57's false "incorrect regex pattern" warning on local folders
    classes = tuple(c for c in args.classes.split(",") if c)
    try:
        prompts = from_jsonl(args.prompts_file) if args.prompts_file else mixed(args.per_class, classes)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or RESULTS_DIR / "bench" / args.engines.resolve().name
    if args.fresh and (out / "records.jsonl").exists():
        (out / "records.jsonl").unlink()
    config = BenchConfig(args.engines, out, args.max_tokens, tuple(int(g) for g in args.gammas.split(",")),
                         args.sweep_per_class, not args.no_llama_cpp, args.cache_dir)
    run = BenchRun(config, prompts)
    records = run.run()
    summary = report.summarize(records, prompts, run.sweep_prompts, margin=run.margin)
    summary.update({"engines": str(args.engines), "max_tokens": args.max_tokens})
    extra = []
    if not args.no_draft_step:
        summary["draft_step_s"] = draft_steps(args.engines, args.cache_dir)
        extra += lines(summary["draft_step_s"])
    overhead = summary["groups"]["overall"]["methods"].get("pearl(gamma=auto)", {}).get("round_overhead")
    if overhead is not None:
        extra.append(f"pearl(gamma=auto) round overhead {100 * overhead:.1f}% (target < 3%: "
                     f"{'met' if overhead < 0.03 else 'not met'})")
    files = report.write(summary, out, f"PEARL benchmark: {args.engines.resolve().name}", extra)
    print((out / "summary.md").read_text())
    print("\n".join(["written:", *map(str, files)]))
    return 0



def bench_concurrency(argv: list[str] | None = None) -> int:
    """``make bench-concurrency``: the batched LLM's output tokens/s and latency at concurrency 1, 2, 4, 8, 16.

Writes summary.json, summary.md and concurrency.png to --out (see pearl_bench.concurrency)."""
    from pearl.llm import LLM
    from pearl.params import SamplingParams
    from pearl_bench.concurrency import requests_for, run_level, summarize, write_report

    parser = argparse.ArgumentParser(prog="pearl bench-concurrency",
                                     description=bench_concurrency.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True, help="a pair's engine directory")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--prompts", type=int, default=16, help="the first N HumanEval problems (default 16)")
    parser.add_argument("--min-requests", type=int, default=8,
                        help="requests per level, at least (default 8: levels up to 8 serve the same 8 prompts)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mode", default="pearl", choices=["pearl", "sd", "ar"])
    parser.add_argument("--gamma", default="auto", help="a number, or auto: the profile's gamma per batch size")
    parser.add_argument("--out", type=Path, help="results folder (default results/concurrency/<pair>)")
    args = parser.parse_args(argv)
    gamma = args.gamma if args.gamma == "auto" else int(args.gamma)
    sampling = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)  # every request the same length
    out = args.out or RESULTS_DIR / "concurrency" / args.engines.resolve().name
    levels = []
    with LLM.from_engine_dir(args.engines) as llm:
        prompts = [llm.tokenizer(p.text).input_ids for p in humaneval(args.prompts)]
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            level = run_level(llm, prompts, concurrency, requests_for(concurrency, args.min_requests), sampling,
                              args.mode, gamma)
            print(f"concurrency {concurrency}: {level.tokens_per_s:.2f} tokens/s, latency "
                  f"{level.latency_mean_s:.1f} s, {level.mean_batch_size:.2f} sequences per round", flush=True)
            levels.append(level)
        summary = summarize(levels, engines=str(args.engines), mode=args.mode, gamma=args.gamma,
                            prompts=len(prompts), max_tokens=args.max_tokens, max_batch_size=llm.max_batch_size)
    files = write_report(summary, out, f"Continuous batching: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    print("\n".join(["written:", *map(str, files)]))
    return 0



def perf(argv: list[str] | None = None) -> int:
    """``make perf``: start the server, load it with perf_analyzer (gRPC; `stream` on and off; several
concurrencies), genai-perf (streamed: TTFT, inter-token latency, output tokens/s) and AIPerf (the same, through
the OpenAI-compatible chat endpoint, with its speculative-decoding figures) using HumanEval prompts, and write
raw outputs, summary.json/.md and latency_throughput.png."""
    from pearl.engine_files import pair_models
    from pearl.serving.commands import openai_config, openai_frontend
    from pearl.serving.repository import values_for_engines
    from pearl.serving.server import TritonServer, add_server_arguments
    from pearl_bench.aiperf import find_aiperf, run_aiperf_point
    from pearl_bench.genai_perf import find_genai_perf, run_genai_point
    from pearl_bench.perf import run_point, token_latencies, write_report

    parser = argparse.ArgumentParser(prog="pearl perf", description=perf.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=8, help="HumanEval prompts cycled through by the load")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--num-draft-tokens", type=int, default=0, metavar="GAMMA",
                        help="every request's fixed draft window (the ensemble's input); 0: adaptive windows")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--requests-per-point", type=int, default=0,
                        help="requests measured per point (default 2 x concurrency, at least 4)")
    parser.add_argument("--genai-perf", default="genai-perf", metavar="PATH",
                        help="genai-perf executable (`make perf` passes the one `make genai-perf` installs)")
    parser.add_argument("--no-genai-perf", action="store_true", help="skip genai-perf")
    parser.add_argument("--aiperf", default="aiperf", metavar="PATH",
                        help="aiperf executable (`make perf` passes the one `make aiperf` installs)")
    parser.add_argument("--no-aiperf", action="store_true", help="skip AIPerf (and the OpenAI frontend)")
    parser.add_argument("--openai-port", type=int, default=9000, help="the OpenAI-compatible API AIPerf loads")
    parser.add_argument("--out", type=Path, help="results folder (default results/perf/<pair>)")
    add_server_arguments(parser, CACHE_DIR)
    args = parser.parse_args(argv)

    def requests_for(concurrency: int) -> int:
        return args.requests_per_point or max(4, 2 * concurrency)

    out = args.out or RESULTS_DIR / "perf" / args.engines.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    prompts = humaneval(args.prompts)
    genai_perf = None if args.no_genai_perf else find_genai_perf(args.genai_perf)
    aiperf = None if args.no_aiperf else find_aiperf(args.aiperf)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    repository = _served(args.engines, args.cache_dir)
    tokenizer = pair_models(args.engines, check_files=False)["target"][0]
    decoding = {"num_draft_tokens": args.num_draft_tokens} if args.num_draft_tokens else {}
    points, genai_points, aiperf_points = [], [], []
    server = TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port)
    frontend = None if aiperf is None else openai_config(server, values_for_engines(args.engines))
    with server, openai_frontend(frontend, server.host, args.openai_port) as openai:
        for stream in (False, True):
            for concurrency in concurrencies:
                point = run_point(server.grpc_url, out, args.cache_dir, prompts, args.max_tokens, stream,
                                  concurrency, requests_for(concurrency), decoding=decoding).to_dict()
                if stream:
                    point.update(token_latencies(out / f"profile_stream_c{concurrency}.json"))
                points.append(point)
                print(json.dumps(point), flush=True)
        if genai_perf is not None:
            for concurrency in concurrencies:
                point = run_genai_point(genai_perf, server.grpc_url, tokenizer, out, args.cache_dir, prompts,
                                        args.max_tokens, concurrency, requests_for(concurrency), decoding)
                genai_points.append(point)
                print(json.dumps({"genai_perf": point}), flush=True)
        if openai is not None:
            for concurrency in concurrencies:
                point = run_aiperf_point(aiperf, f"http://{openai.host}:{openai.port}", frontend.model, tokenizer, out,
                                         prompts, args.max_tokens, concurrency, requests_for(concurrency), decoding)
                aiperf_points.append(point)
                print(json.dumps({"aiperf": point}), flush=True)
    summary = {"engines": str(args.engines), "max_tokens": args.max_tokens, "prompts": args.prompts,
               "num_draft_tokens": args.num_draft_tokens, "points": points,
               "genai_perf": genai_points, "aiperf": aiperf_points}
    write_report(summary, out, f"make perf: {args.engines.resolve().name}")
    print((out / "summary.md").read_text())
    return 0



def soak(argv: list[str] | None = None) -> int:
    """``make soak``: perf_analyzer at concurrency 8 against the served ensemble for a while (default 10
minutes); reports errors, generated tokens/s over time and the server's memory over time; with --kill-every,
requests lost to killed ranks (target 0) and the pause each resume caused."""
    from pearl.serving.server import TritonServer, add_server_arguments
    from pearl_bench.soak import run_soak, write_report

    parser = argparse.ArgumentParser(prog="pearl soak", description=soak.__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16, help="HumanEval prompts cycled through")
    parser.add_argument("--requests-per-window", type=int, default=16)
    parser.add_argument("--kill-every", type=float, metavar="SECONDS",
                        help="SIGKILL a worker rank this often (the ranks in turn); off by default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template value of the served repository, as `pearl serve --set` takes it "
                             "(e.g. spare_world=true)")
    parser.add_argument("--out", type=Path, help="results folder (default results/soak/<pair>)")
    add_server_arguments(parser, CACHE_DIR)
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / "soak" / args.engines.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    try:
        repository = _served(args.engines, args.cache_dir, args.set)
    except ValueError as exc:
        parser.error(str(exc))
    with TritonServer(repository, args.cache_dir, http_port=args.http_port, grpc_port=args.grpc_port,
                      metrics_port=args.metrics_port) as server:
        summary = run_soak(server, out, args.cache_dir, humaneval(args.prompts), args.max_tokens, args.concurrency,
                           60 * args.minutes, args.requests_per_window, kill_every_s=args.kill_every)
    write_report(summary, out, f"soak: {args.engines.resolve().name}, concurrency {args.concurrency}")
    print((out / "soak.md").read_text())
    return 1 if summary["errors"] or summary["lost_requests"] else 0

