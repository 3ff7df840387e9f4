"""Fill the Triton model repository's templates (like TensorRT-LLM's tools/fill_template.py).

    python scripts/fill_template.py --engines engines/<pair> --output <repo> [key:value,key:value]
        copy triton_repo/ to <repo> with every ${placeholder} filled from the engine directory
    python scripts/fill_template.py -i triton_repo/pearl/config.pbtxt key:value,key:value
        fill one file in place (TensorRT-LLM's usage; unknown placeholders are left as they are)
"""
import argparse
import sys
from pathlib import Path
from string import Template

from pearl.serving.repository import build_repository, values_for_engines

TEMPLATES = Path(__file__).resolve().parents[1] / "triton_repo"


def parse_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"fill_template: expected key:value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("values", nargs="?", default="", help="key:value,key:value overrides")
    parser.add_argument("--engines", type=Path, help="a pair's engine directory (engines/<pair>)")
    parser.add_argument("--output", type=Path, help="where the filled repository goes")
    parser.add_argument("--templates", type=Path, default=TEMPLATES)
    parser.add_argument("-i", "--in-place", type=Path, help="fill this one file in place")
    args = parser.parse_args()
    values = parse_pairs(args.values)
    if args.in_place:
        args.in_place.write_text(Template(args.in_place.read_text()).safe_substitute(values))
        return 0
    if not (args.engines and args.output):
        parser.error("give --engines and --output (or -i FILE)")
    try:
        out = build_repository(args.templates, args.output, values_for_engines(args.engines, **values))
    except ValueError as exc:
        print(f"fill_template: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
