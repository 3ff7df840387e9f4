"""`pearl perf` as a script (`make` and users call either): see `pearl perf --help`."""
import sys

from pearl.cli import main

main(["perf", *sys.argv[1:]])
