"""The keys file in force, re-read when it changes, without blocking the event loop.

Reading and parsing the file is blocking I/O and a YAML parse: on a gateway's event loop it
would stall every stream the replica relays. So a request that finds a re-read due awaits it
in a worker thread (`refreshed`), and requests that arrive meanwhile await the same one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from service.access.authentication import KeyRing
from service.access.keys_schema import KeyFileError

log = logging.getLogger(__name__)

_FileVersion = tuple[int, int, int]


def _file_version(path: Path) -> _FileVersion | None:
    """(mtime, inode, size) of what `path` points at now, or None while it is missing.

    os.stat follows symlinks: Kubernetes updates a mounted Secret by pointing the `..data`
    symlink at a new directory, which changes the inode the path resolves to.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class KeyFile:
    """The keys file, re-read when it changes; `current()` is the ring to check keys with.

    Looks at the file at most once per `reload_interval_s`. A version that cannot be read or
    is invalid is logged once and ignored: the last good ring stays in force, so a bad edit
    never locks every client out. Only the first load, in the constructor, raises.
    """

    def __init__(
        self,
        path: Path,
        *,
        reload_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._path = path
        self._interval_s = reload_interval_s
        self._clock = clock
        # Stat before reading: a change after the stat then shows up as a new version.
        self._seen = _file_version(path)
        self._ring = KeyRing.from_file(path)  # KeyFileError: refuse to start
        self._checked_at = clock()
        # Wall time, for operators; the interval runs on `clock`.
        self._loaded_at = datetime.now(UTC)
        self._last_error: str | None = None
        self._reloading: asyncio.Future[None] | None = None
        _log_loaded(path, self._ring)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def loaded_at(self) -> datetime:
        """When the ring in force was read."""
        return self._loaded_at

    @property
    def last_error(self) -> str | None:
        """Why the file's present version is not in force; None when it is."""
        return self._last_error

    def current(self) -> KeyRing:
        """The ring in force; never touches the file."""
        return self._ring

    async def refreshed(self) -> KeyRing:
        """The ring in force once a due re-read, done in a worker thread, has finished."""
        if self._reloading is None and self._due():
            self._reloading = asyncio.ensure_future(asyncio.to_thread(self._refresh))
            self._reloading.add_done_callback(self._reloaded)
        if self._reloading is not None:
            # Shielded: a client that leaves does not cancel the re-read the others await.
            await asyncio.shield(self._reloading)
        return self._ring

    def reload_if_due(self) -> KeyRing:
        """`refreshed` for code without an event loop (the CLI, a script): blocks meanwhile."""
        if self._due():
            self._refresh()
        return self._ring

    def _due(self) -> bool:
        now = self._clock()
        if now - self._checked_at < self._interval_s:
            return False
        self._checked_at = now
        return True

    def _reloaded(self, reload: asyncio.Future[None]) -> None:
        self._reloading = None
        if not reload.cancelled() and reload.exception() is not None:
            log.error("re-reading keys file %s failed: %r", self._path, reload.exception())

    def _refresh(self) -> None:
        version = _file_version(self._path)
        if version == self._seen:
            return
        self._seen = version
        if version is None:
            # Also seen for a moment while some tools replace the file.
            self._reject(f"keys file not found: {self._path}")
            return
        try:
            ring = KeyRing.from_file(self._path)
        except KeyFileError as exc:
            self._reject(str(exc))
            return
        self._ring, self._loaded_at, self._last_error = ring, datetime.now(UTC), None
        _log_loaded(self._path, ring)

    def _reject(self, error: str) -> None:
        self._last_error = error
        log.error(
            "%s; still using the keys loaded at %s",
            error,
            self._loaded_at.isoformat("T", "seconds"),
        )


def _log_loaded(path: Path, ring: KeyRing) -> None:
    active = sum(1 for k in ring.keys() if k.revoked_at is None)
    log.info("keys file %s: %d active keys, %d tenants", path, active, len(ring.tenants()))
