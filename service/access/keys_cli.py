"""`gemma-serve keys create | list | revoke`: manage the API keys file.

Each handler returns the exit code: 0, or 2 with a one-line message on stderr. `create` prints
the new key alone on stdout, so `KEY=$(gemma-serve keys create ...)` captures exactly it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from service.access.authentication import KeyRing, key_id_of
from service.access.keys_editing import create_key, list_keys, revoke_key
from service.access.keys_schema import KeyEntry, KeyFileError, Priority, Tenant

ERROR_EXIT = 2


def add_keys_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `keys` and its subcommands; each sets `func(args) -> int`."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(required=True, metavar="ACTION")

    create = actions.add_parser("create", help="add a key; prints it once on stdout")
    _add_file_argument(create)
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--tenant", help="the tenant the key bills to; created if new")
    owner.add_argument("--admin", action="store_true", help="a key for the admin API only")
    create.add_argument("--models", type=_model_list, help="comma-separated ids/aliases, or '*'")
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens (prompt + completion) a minute")
    create.add_argument("--max-concurrent", type=_positive_int, help="requests in flight at once")
    create.add_argument("--max-tokens", type=_positive_int, help="cap on a request's max_tokens")
    create.add_argument("--priority", choices=[p.value for p in Priority])
    create.add_argument("--note", help="free text shown by `keys list`, e.g. who holds the key")
    create.set_defaults(func=cmd_keys_create)

    listing = actions.add_parser("list", help="keys and tenants; never the keys' hashes")
    _add_file_argument(listing)
    listing.set_defaults(func=cmd_keys_list)

    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    _add_file_argument(revoke)
    revoke.add_argument("key_id", metavar="KEY_ID", help="the 12-hex-digit id `keys list` shows")
    revoke.set_defaults(func=cmd_keys_revoke)


def _add_file_argument(parser: argparse.ArgumentParser) -> None:
    # Required, not read from the environment: settings are resolved in one place only.
    parser.add_argument("--file", type=Path, required=True, help="the keys YAML file")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("name at least one model id or alias, or '*'")
    return models


# Tenant options by flag, so a refusal names what the operator typed.
_TENANT_FLAGS = {
    "--models": "models",
    "--rpm": "rpm",
    "--tpm": "tpm",
    "--max-concurrent": "max_concurrent",
    "--max-tokens": "max_tokens",
    "--priority": "priority",
}


def cmd_keys_create(args: argparse.Namespace) -> int:
    given = [flag for flag, dest in _TENANT_FLAGS.items() if getattr(args, dest) is not None]
    if args.admin and given:
        return _fail(
            f"an admin key belongs to no tenant and has no limits: drop {', '.join(given)}"
        )
    try:
        key = create_key(
            args.file,
            args.tenant,
            admin=args.admin,
            models=args.models,
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            max_concurrent_requests=args.max_concurrent,
            max_tokens=args.max_tokens,
            priority=args.priority,
            note=args.note,
        )
    except KeyFileError as exc:
        return _fail(exc)
    print(key, flush=True)
    owner = "an admin key" if args.admin else f"a key for tenant '{args.tenant}'"
    print(
        f"gemma-serve: created {owner}, id {key_id_of(key)}, in {args.file}. It cannot be shown "
        "again (the file keeps only its hash): store it now.",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    try:
        ring = list_keys(args.file)
    except KeyFileError as exc:
        return _fail(exc)
    print(format_listing(ring), end="")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    try:
        entry = revoke_key(args.file, args.key_id)
    except KeyFileError as exc:
        return _fail(exc)
    print(f"key {entry.id} revoked at {_when(entry.revoked_at)} in {args.file}")
    return 0


def _fail(reason: KeyFileError | str) -> int:
    print(f"gemma-serve: {reason}", file=sys.stderr)
    return ERROR_EXIT


def format_listing(ring: KeyRing) -> str:
    """Two tables: keys (no hashes) and tenants with their limits; '-' is unlimited."""
    keys = _table(
        ("KEY ID", "TENANT", "ADMIN", "CREATED", "REVOKED", "NOTE"),
        [_key_row(k) for k in ring.keys()],
        empty="(no keys)",
    )
    tenants = _table(
        ("TENANT", "MODELS", "RPM", "TPM", "CONCURRENT", "MAX TOKENS", "PRIORITY"),
        [_tenant_row(t) for t in ring.tenants()],
        empty="(no tenants)",
    )
    return f"{keys}\n{tenants}"


def _key_row(key: KeyEntry) -> tuple[str, ...]:
    return (
        key.id,
        key.tenant or "-",
        "yes" if key.admin else "no",
        _when(key.created_at),
        _when(key.revoked_at),
        # One line per key, whatever the note holds.
        " ".join((key.note or "").split()),
    )


def _tenant_row(tenant: Tenant) -> tuple[str, ...]:
    limits = (
        tenant.requests_per_minute,
        tenant.tokens_per_minute,
        tenant.max_concurrent_requests,
        tenant.max_tokens,
    )
    return (
        tenant.id,
        ",".join(tenant.models),
        *("-" if limit is None else str(limit) for limit in limits),
        str(tenant.priority),
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> str:
    if not rows:
        return f"{empty}\n"
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n"
