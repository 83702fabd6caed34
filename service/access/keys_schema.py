"""The API keys file: its schema (tenants and key entries), and reading and validating it.

A key is `gsk_<key id>_<secret>`: the key id (12 hex digits) is public, shown by
`gemma-serve keys list` and written to the audit log; the secret is 256 random bits. The file
holds only the sha256 of each whole key, so a copy of the file (or of the Kubernetes Secret it
is mounted from) lets nobody call the service.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from service.errors import ConfigError

_Model = TypeVar("_Model", bound=BaseModel)

KEY_PREFIX = "gsk_"
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ALL_MODELS = "*"


class KeyFileError(ConfigError):
    """The keys file cannot be read, is invalid, or cannot be changed as asked.

    A ConfigError, so `gemma-serve up` refuses to start on a broken file. Messages are one
    line, name the file and the field, and never hold a key or a hash.
    """


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


def reference_problems(doc: KeysDocument) -> list[str]:
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
    doc = validated(KeysDocument, data, source)
    problems = reference_problems(doc)
    if problems:
        raise KeyFileError(f"keys file {source} is invalid: {'; '.join(problems)}")
    return doc


def validated(model: type[_Model], data: dict[str, Any], source: str) -> _Model:
    """`data` as `model`; KeyFileError naming `source` and the fields, never their values."""
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
    """Read, parse and validate the file: blocking I/O and a YAML parse, so off the loop."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"keys file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read keys file {path}: {reason_of(exc)}") from None
    return parse_document(text, str(path))


def reason_of(exc: Exception) -> str:
    """An I/O error's reason for a one-line message, without the path it may repeat."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
