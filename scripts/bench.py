"""`pearl bench` as a script (`make` and users call either): see `pearl bench --help`."""
import sys

from pearl.cli import main

main(["bench", *sys.argv[1:]])
