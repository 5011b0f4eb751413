"""The benchmark harness (`make bench`, `python -m bench.run`): not a test; figures land in bench/results/."""
