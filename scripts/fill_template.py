"""`pearl fill-template` as a script (`make` and users call either): see `pearl fill-template --help`."""
import sys

from pearl.cli import main

main(["fill-template", *sys.argv[1:]])
