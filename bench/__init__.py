"""Benchmarks, one `make bench-*` target each, ratios measured side by side in one run."""
