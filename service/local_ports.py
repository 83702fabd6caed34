"""Loopback ports for servers that tests, load tests and benchmarks start on one host.

A port from `bind(0)` comes from the kernel's ephemeral range, the same range every outgoing
connection draws from. Between picking it and the server binding it, Ray's start-up opens
hundreds of connections, and one of them can take it (CI: the Serve proxy failed with
"Address already in use"). So pick below the ephemeral range and above Ray's worker ports
(10002-19999), where only listeners live.
"""

import random
import socket
from pathlib import Path

_RAY_WORKER_PORTS_END = 19999
_FALLBACK_EPHEMERAL_START = 32768
# Ports already given out in this process: a test picks several before it binds any, and a
# random pick could repeat one.
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing listens on now and no outgoing connection will take."""
    low, high = _RAY_WORKER_PORTS_END + 1, _ephemeral_start() - 1
    if high - low < 1000:  # an unusual ephemeral range leaves no quiet band: use the kernel's pick
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    for port in random.sample(range(low, high + 1), 200):
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {low}-{high}")
