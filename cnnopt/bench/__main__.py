"""``python -m cnnopt.bench [options]``: the same as ``cnnopt bench [options]``.

An entry point only: nothing in the package imports it (or the CLI).
"""

import sys

from cnnopt.cli import main

sys.argv = ["cnnopt", "bench", *sys.argv[1:]]
main()
