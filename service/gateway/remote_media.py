"""Remote media URLs may point only at public addresses.

With `media.allow_remote_urls` on, the engine fetches http(s) media itself. A URL naming
loopback, a private network, link-local (the cloud metadata service, 169.254.169.254) or any
other non-public address would make the engine fetch from inside the cluster for the client.
The host is resolved here and refused if any of its addresses is not public. The engine then
resolves it again: a name that changes its answer in between (DNS rebinding) is not caught
here, which is why the engines also refuse redirects (VLLM_MEDIA_URL_ALLOW_REDIRECTS=0) and
why the cluster should block engine egress to private ranges (docs/operator-guide.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from service.errors import InvalidRequest

RESOLVE_TIMEOUT_S = 2.0


async def check_public_hosts(hosts: Sequence[tuple[str, str]]) -> None:
    """`hosts` are (JSON path, host) pairs; 400 naming the path of the first that is not
    public or cannot be resolved."""
    for path, host in dict.fromkeys(hosts):
        for address in await _addresses(path, host):
            if not ipaddress.ip_address(address).is_global:
                raise InvalidRequest(
                    f"{path}: the host '{host}' resolves to {address}, which is not a public "
                    "address; media must come from the public internet",
                    param=path,
                )


async def _addresses(path: str, host: str) -> list[str]:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return [host.strip("[]")]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise InvalidRequest(f"{path}: the host '{host}' cannot be resolved", param=path) from None
    return [info[4][0].split("%")[0] for info in infos]
