"""`pearl soak` as a script (`make` and users call either): see `pearl soak --help`."""
import sys

from pearl.cli import main

main(["soak", *sys.argv[1:]])
