"""`pearl client` as a script (`make` and users call either): see `pearl client --help`."""
import sys

from pearl.cli import main

main(["client", *sys.argv[1:]])
