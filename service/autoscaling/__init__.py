"""Replica counts per pool: an SLO-aware decision (pure) and its Ray Serve adapter."""
