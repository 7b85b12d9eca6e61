"""The research behind cnnopt's claims, beside the package and not installed with it. Run from the
repository root, e.g. ``python -m benchmarks.search.section``; see benchmarks/README.md."""
