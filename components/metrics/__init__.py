"""Metric nodes: accumulators over held-out splits (see dgraph.runtime.metrics)."""
