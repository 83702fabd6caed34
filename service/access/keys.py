"""API keys and tenants: the keys file, checking a Bearer key, hot reload, editing the file.

A key is `gsk_<key id>_<secret>`: the key id (12 hex digits) is public, shown by
`gemma-serve keys list` and written to the audit log; the secret is 256 random bits. The file
holds only the sha256 of each whole key, so a copy of the file (or of the Kubernetes Secret it
is mounted from) lets nobody call the service.

A plain sha256 is enough here, without salt or a slow hash, as is usual for random API tokens:
those defend guessable passwords against offline guessing, and a 256-bit random secret cannot be
guessed at any hashing speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from service.errors import ConfigError, ServiceError

log = logging.getLogger(__name__)
_Model = TypeVar("_Model", bound=BaseModel)

KEY_PREFIX = "gsk_"
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ALL_MODELS = "*"
_TOKEN = re.compile(r"gsk_([0-9a-f]{12})_([A-Za-z0-9_-]+)")
# Compared against when the token names no key, so that path costs the same hash and compare.
_NO_SUCH_HASH = hashlib.sha256(b"gemma-serve: no such key").hexdigest()
_FILE_HEADER = (
    "# gemma-serve API keys and tenants; edit with `gemma-serve keys` (docs/operator-guide.md).\n"
    "# Holds sha256 hashes of the keys, never the keys themselves.\n"
)


# --- Errors a client sees -------------------------------------------------------------------
#
# OpenAI answers 401 and 403 with type "invalid_request_error" (e.g. 401 with code
# "invalid_api_key"); "authentication_error" and "permission_error" are other vendors' types.
# OpenAI's SDKs choose AuthenticationError and PermissionDeniedError from the status alone.


class AuthenticationFailed(ServiceError):
    """401: no usable key; the client should send (another) key."""

    status = 401
    type = "invalid_request_error"
    # RFC 6750 section 3: name the scheme; add error="invalid_token" only once a token was sent.
    challenge = "Bearer"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class PermissionDenied(ServiceError):
    """403: the key is good, but not for this."""

    status = 403
    type = "invalid_request_error"


_HOW_TO_SEND = "send your API key in an Authorization header: `Authorization: Bearer <key>`"


class MissingKey(AuthenticationFailed):
    code = "missing_api_key"

    def __init__(self, message: str = f"no API key was given; {_HOW_TO_SEND}"):
        super().__init__(message)


class InvalidKey(AuthenticationFailed):
    code = "invalid_api_key"
    challenge = 'Bearer error="invalid_token"'

    # One message for a malformed token, an unknown key id and a wrong secret, and never the
    # token itself: it may be a real key sent to the wrong service.
    def __init__(self) -> None:
        super().__init__(
            "invalid API key; gemma-serve keys look like gsk_<key id>_<secret>: "
            "ask the service's operator for one"
        )


class RevokedKey(AuthenticationFailed):
    code = "api_key_revoked"
    challenge = 'Bearer error="invalid_token"'

    def __init__(self, key_id: str):
        super().__init__(
            f"API key {key_id} has been revoked; ask the service's operator for a new one"
        )


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"

    def __init__(self, tenant: Tenant, model_id: str):
        super().__init__(
            f"tenant '{tenant.id}' may not use model '{model_id}'; "
            f"allowed: {', '.join(tenant.models)}",
            param="model",
        )


class AdminKeyRequired(PermissionDenied):
    code = "admin_key_required"

    def __init__(self, key_id: str):
        super().__init__(f"the admin API needs an admin key; key {key_id} is a tenant's key")


class AdminKeyOnModelApi(PermissionDenied):
    code = "admin_key_not_allowed"

    def __init__(self, key_id: str):
        super().__init__(
            f"key {key_id} is an admin key: it calls only the admin API (/admin/*); "
            "use a tenant's key for the model API"
        )


# --- Errors an operator sees ----------------------------------------------------------------


class KeyFileError(ConfigError):
    """The keys file cannot be read, is invalid, or cannot be changed as asked.

    A ConfigError, so `gemma-serve up` refuses to start on a broken file. Messages are one
    line, name the file and the field, and never hold a key or a hash.
    """


class UnknownKeyId(KeyFileError):
    """No key in the file has this id."""


# --- The file's schema ----------------------------------------------------------------------


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class _Strict(BaseModel):
    # A misspelt field is an error, not a silently ignored limit.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tenant(_Strict):
    """Who pays and is limited: every non-admin key belongs to one."""

    id: str = Field(pattern=TENANT_ID_PATTERN)
    models: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        min_length=1, description="model ids and aliases it may name; '*' = all"
    )
    requests_per_minute: int | None = Field(None, ge=1, description="unset: unlimited")
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt + completion")
    max_concurrent_requests: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="cap on a request's max_tokens")
    priority: Priority = Priority.NORMAL

    def may_use(self, model_id: str) -> bool:
        """Whether a request may name `model_id`, a pool id or an alias, as its model.

        An alias is allowed only when listed itself: it may route to any pool.
        """
        return ALL_MODELS in self.models or model_id in self.models


class KeyEntry(_Strict):
    id: str = Field(pattern=KEY_ID_PATTERN)
    # Not in repr, so a logged entry never carries it.
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    tenant: str | None = Field(None, description="required unless admin; admin keys have none")
    admin: bool = False
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None = None
    note: str | None = None


class KeysDocument(_Strict):
    tenants: tuple[Tenant, ...] = ()
    keys: tuple[KeyEntry, ...] = ()


def _reference_problems(doc: KeysDocument) -> list[str]:
    """What pydantic cannot check field by field: uniqueness and references between entries."""
    problems = _repeated("tenants", [t.id for t in doc.tenants])
    problems += _repeated("keys", [k.id for k in doc.keys])
    tenant_ids = {t.id for t in doc.tenants}
    for i, key in enumerate(doc.keys):
        # Rejected rather than ignored: a tenant on an admin key suggests someone thinks the
        # key is limited to that tenant, and it is not.
        if key.admin and key.tenant is not None:
            problems.append(f"keys.{i}.tenant: admin keys belong to no tenant; remove it")
        elif not key.admin and key.tenant is None:
            problems.append(f"keys.{i}.tenant: required for a key that is not admin")
        elif not key.admin and key.tenant not in tenant_ids:
            problems.append(f"keys.{i}.tenant: '{key.tenant}' is not a tenant in this file")
    return problems


def _repeated(section: str, ids: list[str]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for i, entry_id in enumerate(ids):
        if entry_id in seen:
            problems.append(f"{section}.{i}.id: '{entry_id}' is repeated")
        seen.add(entry_id)
    return problems


def parse_document(text: str, source: str) -> KeysDocument:
    """Parse and validate a keys file's text; KeyFileError names `source` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KeyFileError(f"keys file {source} is not valid YAML{_yaml_where(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KeyFileError(f"keys file {source} must hold a mapping (tenants, keys)")
    doc = _validated(KeysDocument, data, source)
    problems = _reference_problems(doc)
    if problems:
        raise KeyFileError(f"keys file {source} is invalid: {'; '.join(problems)}")
    return doc


def _validated(model: type[_Model], data: dict[str, Any], source: str) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Field paths and messages only: str(exc) would quote the input, hashes included.
        described = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise KeyFileError(f"keys file {source} is invalid: {described}") from None


def _yaml_where(exc: yaml.YAMLError) -> str:
    # The position and problem only: YAML's own message quotes the offending line.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem or 'syntax error'}"


def read_document(path: Path) -> KeysDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"keys file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read keys file {path}: {_reason(exc)}") from None
    return parse_document(text, str(path))


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


# --- Checking a key -------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a request's key says is calling."""

    key_id: str
    tenant: Tenant | None
    admin: bool

    def check_model_api(self) -> None:
        """Raise unless this key may call the model API (/v1/*) at all."""
        if self.admin or self.tenant is None:
            raise AdminKeyOnModelApi(self.key_id)

    def check_model(self, model_id: str) -> None:
        """Raise unless this key may call the model API naming `model_id` as the model."""
        self.check_model_api()
        assert self.tenant is not None  # check_model_api refused tenant-less keys
        if not self.tenant.may_use(model_id):
            raise ModelNotAllowed(self.tenant, model_id)

    def check_admin(self) -> None:
        """Raise unless this key may call the admin API (/admin/*)."""
        if not self.admin:
            raise AdminKeyRequired(self.key_id)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    match = _TOKEN.fullmatch(key)
    return match.group(1) if match else None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; MissingKey without one."""
    if authorization is None or not authorization.strip():
        raise MissingKey()
    scheme, _, token = authorization.strip().partition(" ")
    # RFC 9110 section 11.1: the scheme is case-insensitive.
    if scheme.lower() != "bearer":
        raise MissingKey(f"the Authorization header must use the Bearer scheme; {_HOW_TO_SEND}")
    if not token.strip():
        raise MissingKey()
    return token.strip()


class KeyRing:
    """An immutable snapshot of the keys file: answers who a request's key belongs to."""

    def __init__(self, document: KeysDocument):
        self._document = document
        self._keys = {k.id: k for k in document.keys}
        self._tenants = {t.id: t for t in document.tenants}

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        return cls(read_document(path))

    @property
    def document(self) -> KeysDocument:
        return self._document

    def tenants(self) -> tuple[Tenant, ...]:
        return self._document.tenants

    def keys(self) -> tuple[KeyEntry, ...]:
        return self._document.keys

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The principal of a request's Authorization header, or an AuthenticationFailed."""
        token = bearer_token(authorization_header)
        key_id = key_id_of(token)
        entry = self._keys.get(key_id) if key_id else None
        expected = entry.sha256 if entry else _NO_SUCH_HASH
        # Every token costs one hash and one constant-time compare, malformed or unknown ones
        # too: response time tells nothing about how close a guess came.
        if not hmac.compare_digest(hash_key(token), expected) or entry is None:
            raise InvalidKey()
        # Revocation is told only to a holder of the right secret: key ids are public.
        if entry.revoked_at is not None:
            raise RevokedKey(entry.id)
        tenant = self._tenants[entry.tenant] if entry.tenant is not None else None
        return Principal(key_id=entry.id, tenant=tenant, admin=entry.admin)


# --- Hot reload -----------------------------------------------------------------------------

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
    never locks every client out. Only the first load raises.
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
        now = self._clock()
        if now - self._checked_at >= self._interval_s:
            self._checked_at = now
            self._refresh()
        return self._ring

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


# --- Editing the file -----------------------------------------------------------------------


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
    tenant = _validated(Tenant, base | changes, source)
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
    problems = _reference_problems(doc)
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
        raise KeyFileError(f"cannot write keys file {path}: {_reason(exc)}") from None
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
            raise KeyFileError(f"cannot write keys file {path}: {_reason(exc)}") from None
        raise


def _mode_or(path: Path, default: int) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default
