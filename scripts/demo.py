"""`pearl demo` as a script (`make` and users call either): see `pearl demo --help`."""
import sys

from pearl.cli import main

main(["demo", *sys.argv[1:]])
