"""`pearl serve` as a script (`make` and users call either): see `pearl serve --help`."""
import sys

from pearl.cli import main

main(["serve", *sys.argv[1:]])
