"""`python -m cnnopt`: the `cnnopt` command, where the console script is not on PATH."""

from cnnopt.cli import main

main()
