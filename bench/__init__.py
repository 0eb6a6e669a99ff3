"""Loopdeck's benchmark suite. `python -m bench.run --help`; results in bench/RESULTS.md."""
