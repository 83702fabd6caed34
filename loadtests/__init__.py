"""Load-test profiles, payload generation and latency measurement for gemma-serve."""
