"""`python -m cli` runs the autopack command line."""

from cli.main import main

main()
