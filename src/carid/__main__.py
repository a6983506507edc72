"""`python -m carid`: the same as the `carid` command."""

from carid.cli import main

main()
