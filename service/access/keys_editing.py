"""Editing the keys file, for `gemma-serve keys create | list | revoke` (keys_cli.py)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from service.access.authentication import KeyRing, hash_key
from service.access.keys_schema import (
    KEY_ID_PATTERN,
    KEY_PREFIX,
    KeyEntry,
    KeyFileError,
    KeysDocument,
    Priority,
    Tenant,
    read_document,
    reason_of,
    reference_problems,
    validated,
)

_FILE_HEADER = (
    "# gemma-serve API keys and tenants; edit with `gemma-serve keys` (docs/operator-guide.md).\n"
    "# Holds sha256 hashes of the keys, never the keys themselves.\n"
)


class UnknownKeyId(KeyFileError):
    """No key in the file has this id."""


def create_key(
    path: Path,
    tenant_id: str | None,
    *,
    admin: bool = False,
    models: Iterable[str] | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent_requests: int | None = None,
    max_tokens: int | None = None,
    priority: Priority | str | None = None,
    note: str | None = None,
) -> str:
    """Add a key and return it in plaintext: the only time it exists outside its holder.

    A tenant key creates its tenant if new (then `models` is required) or updates the
    limits given here; limits left None keep their value. An admin key takes no tenant and no
    limits. Creates the file (mode 0600) if missing.
    """
    changes = {
        name: value
        for name, value in (
            ("models", tuple(models) if models is not None else None),
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
            ("max_concurrent_requests", max_concurrent_requests),
            ("max_tokens", max_tokens),
            ("priority", priority),
        )
        if value is not None
    }
    _check_owner(tenant_id, admin=admin, changes=changes)
    doc = _read_or_empty(path)
    if tenant_id is not None:
        doc = _with_tenant(doc, tenant_id, changes, source=str(path))
    key_id = _new_key_id(k.id for k in doc.keys)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    entry = KeyEntry(
        id=key_id,
        sha256=hash_key(key),
        tenant=tenant_id,
        admin=admin,
        created_at=_now(),
        note=note,
    )
    _write_document(path, doc.model_copy(update={"keys": (*doc.keys, entry)}))
    return key


def revoke_key(path: Path, key_id: str) -> KeyEntry:
    """Mark a key revoked (kept in the file, for the audit trail); returns its entry.

    Revoking a revoked key changes nothing.
    """
    if not re.fullmatch(KEY_ID_PATTERN, key_id):
        # Not echoed: it may be a whole key pasted by mistake.
        raise UnknownKeyId(
            "a key id is 12 hex digits, as `gemma-serve keys list` shows; that is not one"
        )
    doc = read_document(path)
    entry = next((k for k in doc.keys if k.id == key_id), None)
    if entry is None:
        raise UnknownKeyId(f"no key {key_id} in {path}; `gemma-serve keys list` shows the ids")
    if entry.revoked_at is not None:
        return entry
    revoked = entry.model_copy(update={"revoked_at": _now()})
    keys = tuple(revoked if k.id == key_id else k for k in doc.keys)
    _write_document(path, doc.model_copy(update={"keys": keys}))
    return revoked


def list_keys(path: Path) -> KeyRing:
    """The file's keys and tenants, read and validated; KeyFileError if it cannot be."""
    return KeyRing.from_file(path)


def _check_owner(tenant_id: str | None, *, admin: bool, changes: dict[str, Any]) -> None:
    if admin and tenant_id is not None:
        raise KeyFileError("an admin key belongs to no tenant; give a tenant or admin, not both")
    if admin and changes:
        raise KeyFileError(f"an admin key has no tenant limits; drop {', '.join(changes)}")
    if not admin and tenant_id is None:
        raise KeyFileError("a key needs a tenant, or must be an admin key")


def _with_tenant(
    doc: KeysDocument, tenant_id: str, changes: dict[str, Any], *, source: str
) -> KeysDocument:
    existing = next((t for t in doc.tenants if t.id == tenant_id), None)
    if existing is None and "models" not in changes:
        raise KeyFileError(
            f"tenant '{tenant_id}' is new: give the models it may call ('*' for all)"
        )
    base = existing.model_dump() if existing else {"id": tenant_id}
    tenant = validated(Tenant, base | changes, source)
    if existing is None:
        return doc.model_copy(update={"tenants": (*doc.tenants, tenant)})
    tenants = tuple(tenant if t.id == tenant_id else t for t in doc.tenants)
    return doc.model_copy(update={"tenants": tenants})


def _new_key_id(taken: Iterable[str]) -> str:
    used = set(taken)
    while (key_id := secrets.token_hex(6)) in used:
        pass
    return key_id


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _read_or_empty(path: Path) -> KeysDocument:
    if not path.exists():
        return KeysDocument()
    return read_document(path)


def _write_document(path: Path, doc: KeysDocument) -> None:
    """Replace the file atomically: a reader sees the old version or the new, never half.

    Keeps the file's mode (0600 for a new file). Through a symlink, the target is replaced and
    the link kept.
    """
    problems = reference_problems(doc)
    if problems:
        raise KeyFileError(f"refusing to write an invalid keys file {path}: {'; '.join(problems)}")
    target = path.resolve()
    text = _FILE_HEADER + yaml.safe_dump(
        doc.model_dump(mode="json", exclude_none=True), sort_keys=False
    )
    try:
        mode = _mode_or(target, 0o600)
        # In the target's directory, so os.replace is a rename within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise KeyFileError(f"cannot write keys file {path}: {reason_of(exc)}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise KeyFileError(f"cannot write keys file {path}: {reason_of(exc)}") from None
        raise


def _mode_or(path: Path, default: int) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default
