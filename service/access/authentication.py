"""Checking a request's key: the Bearer token, its hash against the file's, and who it is.

A plain sha256 is enough here, without salt or a slow hash, as is usual for random API tokens:
those defend guessable passwords against offline guessing, and a 256-bit random secret cannot be
guessed at any hashing speed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from service.access.keys_schema import KeyEntry, KeysDocument, Tenant, read_document
from service.errors import ServiceError

_TOKEN = re.compile(r"gsk_([0-9a-f]{12})_([A-Za-z0-9_-]+)")
# Compared against when the token names no key, so that path costs the same hash and compare.
_NO_SUCH_HASH = hashlib.sha256(b"gemma-serve: no such key").hexdigest()


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
