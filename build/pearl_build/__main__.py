"""``python -m pearl_build [PAIR]`` (what ``make engines`` runs): build a pair's engines under engines/<pair>."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PAIR = "qwen2.5-coder-0.5b-1.5b"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pearl_build", description=__doc__.splitlines()[0])
    parser.add_argument("pair", nargs="?", default=DEFAULT_PAIR,
                        help=f"a pair name from build/configs/ or a .yaml path (default {DEFAULT_PAIR})")
    parser.add_argument("--engines-dir", type=Path, default=Path("engines"), help="where engines/<pair> goes")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/pearl"),
                        help="downloads and assembled source files")
    parser.add_argument("--dry-run", action="store_true", help="print the build plan and build nothing")
    parser.add_argument("--force", action="store_true", help="rebuild even engines that are up to date")
    parser.add_argument("--no-profile", action="store_true", help="skip measuring the pair (gamma=auto then "
                        "measures when an LLM starts)")
    parser.add_argument("--reprofile", action="store_true", help="measure the pair again even if current")
    parser.add_argument("--list", action="store_true", help="list the pair configs and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import transformers

    from pearl_build.config import ConfigError, available_pairs, load_pair_config
    from pearl_build.pipeline import build_pair, plan_pair
    from pearl_build.sources import SourceError

    transformers.logging.set_verbosity_error()
    if args.list:
        for name in available_pairs():
            print(name)
        return 0
    try:
        pair = load_pair_config(args.pair)
        if args.dry_run:
            print(plan_pair(pair, args.engines_dir, args.cache_dir).render())
            return 0
        out = build_pair(pair, args.engines_dir, args.cache_dir, force=args.force, profile=not args.no_profile,
                         reprofile=args.reprofile)
    except (ConfigError, SourceError, ValueError, RuntimeError) as exc:
        print(f"make engines: error: {exc}", file=sys.stderr)
        return 2
    print(f"engines ready: {out}  (run: python -m pearl generate --engines {out} --prompt ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
