"""`python -m cnnopt.cli`: the `cnnopt` command, for a checkout without the console script."""

from cnnopt.cli import main

main()
