"""`python -m marketplace.cli`: the `modelmarket` console script."""

from marketplace.cli import main

main()
