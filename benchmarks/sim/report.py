"""What the simulations report with: the service-level objective, percentiles, Markdown tables
and plot files."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sim.deployment import ROOT

RESULTS = ROOT / "benchmarks" / "results"

# Service-level objective: the pools' ttft_p95_slo_s, and a decode speed a reader keeps up with.
TTFT_SLO_S = 2.0
TPOT_SLO_S = 0.050


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (numpy's linear rule); NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def within_slo(ttft: np.ndarray, tpot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request: TTFT within its objective; TTFT and TPOT within theirs (NaN, a request
    not served, meets neither)."""
    ttft_ok = np.asarray(ttft) <= TTFT_SLO_S
    return ttft_ok, ttft_ok & (np.asarray(tpot) <= TPOT_SLO_S)


def table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@contextmanager
def figure(path: Path, title: str, rows: int, cols: int, **subplots: Any) -> Iterator[Any]:
    """A matplotlib figure (headless) whose axes the caller draws on; on exit it gets the
    title and is written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = subplots.pop("dpi", 100)
    fig, axes = plt.subplots(rows, cols, **subplots)
    try:
        yield axes
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def shown(path: Path) -> Path:
    """A path as the report prints it: relative to the checkout when inside it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
