"""`pearl bench-concurrency` as a script (`make` and users call either): see `pearl bench-concurrency --help`."""
import sys

from pearl.cli import main

main(["bench-concurrency", *sys.argv[1:]])
