"""`python -m promptops.cli`: the command line."""

from promptops.cli import main

main()
