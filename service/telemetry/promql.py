"""PromQL the service itself evaluates. Ray prefixes every application metric with `ray_`."""

from __future__ import annotations

TTFT_BUCKET = "ray_gemma_serve_time_to_first_token_seconds_bucket"


def ttft_quantile(pool_id: str, window_s: int, quantile: float = 0.95) -> str:
    """TTFT quantile of one pool over a window, across every gateway replica (NaN when idle)."""
    return (
        f"histogram_quantile({quantile}, sum by (le) "
        f'(rate({TTFT_BUCKET}{{pool="{pool_id}"}}[{window_s}s])))'
    )
