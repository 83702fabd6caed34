"""A vLLM worker extension (`worker_extension_cls`) that reports, from inside each CPU engine
worker, what decides whether and where it runs: AMX permission and OpenMP core binding.
Reached through `LLMServer.collective_rpc` (tests, and operators debugging a host)."""

from __future__ import annotations

import os
from dataclasses import asdict

from service import amx


class CpuEngineProbe:
    def amx_status(self) -> dict[str, object]:
        return asdict(amx.status())

    def cpu_cores(self) -> list[int]:
        """The cores this worker's model thread may run on, after vLLM's OpenMP binding
        (GOMP_CPU_AFFINITY, as vLLM preloads torch's libgomp)."""
        return sorted(os.sched_getaffinity(0))
