"""Choosing the pool for a request: features, named policy steps, and live pool load."""
