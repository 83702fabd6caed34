"""API keys: format, storage, checking a Bearer key, tenants' model lists, hot reload."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from service.access import keys_schema
from service.access.authentication import (
    AdminKeyOnModelApi,
    AdminKeyRequired,
    InvalidKey,
    KeyRing,
    MissingKey,
    ModelNotAllowed,
    RevokedKey,
    hash_key,
)
from service.access.keys_editing import UnknownKeyId, create_key, list_keys, revoke_key
from service.access.keys_reload import KeyFile
from service.access.keys_schema import KeyFileError, Tenant
from service.errors import ConfigError, ServiceError, error_body

VALID_HASH = "ab" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


def tenant_key(path: Path, tenant: str = "team-a", models: tuple[str, ...] = ("gemma-4",)) -> str:
    return create_key(path, tenant, models=models)


def bearer(key: str) -> str:
    return f"Bearer {key}"


def secret_of(key: str) -> str:
    return key.split("_", 2)[2]


def refusal(ring: KeyRing, header: str | None) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        ring.authenticate(header)
    return caught.value


def write_keys_yaml(path: Path, tenant_ref: str = "team-a", extra: str = "") -> None:
    path.write_text(
        "tenants:\n"
        "  - id: team-a\n"
        "    models: ['*']\n"
        "keys:\n"
        "  - id: 3f9a1c0b7d2e\n"
        f"    sha256: {VALID_HASH}\n"
        f"    tenant: {tenant_ref}\n"
        "    created_at: 2026-11-26T07:40:00Z\n" + extra
    )


# --- Key format and storage -----------------------------------------------------------------


def test_a_key_is_gsk_a_12_hex_digit_id_and_a_256_bit_url_safe_secret(path):
    key = tenant_key(path)
    assert re.fullmatch(r"gsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)


def test_every_key_gets_its_own_id_and_secret(path):
    first, second = tenant_key(path), tenant_key(path)
    assert first.split("_")[1] != second.split("_")[1]
    assert secret_of(first) != secret_of(second)


def test_the_file_holds_the_keys_sha256_and_never_the_key(path):
    key = tenant_key(path)
    text = path.read_text()
    assert secret_of(key) not in text
    assert hash_key(key) in text


def test_a_new_keys_file_is_readable_by_its_owner_only(path):
    tenant_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rewriting_the_file_keeps_its_mode(path):
    tenant_key(path)
    path.chmod(0o640)
    tenant_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_rewriting_the_file_leaves_no_temporary_file_behind(path):
    tenant_key(path)
    tenant_key(path)
    assert [p.name for p in path.parent.iterdir()] == ["keys.yaml"]


def test_editing_through_a_symlink_keeps_the_link(path, tmp_path):
    link = tmp_path / "link.yaml"
    tenant_key(path)
    link.symlink_to(path)
    tenant_key(link)
    assert link.is_symlink()
    assert len(list_keys(path).keys()) == 2


# --- Creating keys and tenants --------------------------------------------------------------


def test_a_key_for_a_new_tenant_creates_it_with_the_limits_given(path):
    create_key(path, "team-a", models=["gemma-4"], requests_per_minute=60, priority="high")
    (tenant,) = list_keys(path).tenants()
    assert (tenant.id, tenant.models, tenant.requests_per_minute) == ("team-a", ("gemma-4",), 60)
    assert tenant.priority == "high"


def test_a_key_for_an_existing_tenant_updates_only_the_limits_given(path):
    create_key(path, "team-a", models=["gemma-4"], requests_per_minute=60, max_tokens=1024)
    create_key(path, "team-a", requests_per_minute=120)
    (tenant,) = list_keys(path).tenants()
    assert (tenant.requests_per_minute, tenant.max_tokens) == (120, 1024)


def test_a_new_tenant_must_be_given_its_models(path):
    with pytest.raises(KeyFileError, match="team-b.*models"):
        create_key(path, "team-b")


def test_an_invalid_tenant_id_is_refused_naming_the_field(path):
    with pytest.raises(KeyFileError, match=r"\bid\b"):
        create_key(path, "Team A", models=["*"])


def test_an_admin_key_takes_no_tenant(path):
    with pytest.raises(KeyFileError, match="admin"):
        create_key(path, "team-a", admin=True)


# --- Checking a key -------------------------------------------------------------------------


def test_a_created_key_authenticates_as_its_tenant(path):
    key = tenant_key(path)
    principal = list_keys(path).authenticate(bearer(key))
    assert principal.key_id == key.split("_")[1]
    assert principal.tenant is not None and principal.tenant.id == "team-a"
    assert principal.admin is False


def test_the_bearer_scheme_is_case_insensitive(path):
    key = tenant_key(path)
    assert list_keys(path).authenticate(f"bearer {key}").tenant is not None


def test_no_authorization_header_is_a_missing_key_with_a_bearer_challenge(path):
    tenant_key(path)
    err = refusal(list_keys(path), None)
    assert isinstance(err, MissingKey)
    assert (err.status, err.code) == (401, "missing_api_key")
    assert "Authorization: Bearer <key>" in err.message
    assert err.headers() == {"WWW-Authenticate": "Bearer"}


def test_another_scheme_is_a_missing_key_telling_how_to_send_one(path):
    tenant_key(path)
    err = refusal(list_keys(path), "Basic dXNlcjpwYXNz")
    assert isinstance(err, MissingKey) and "Bearer" in err.message


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda key: "not-a-gemma-serve-key", id="malformed"),
        pytest.param(lambda key: "sk-proj-" + secret_of(key), id="openai-style"),
        pytest.param(lambda key: f"gsk_000000000000_{secret_of(key)}", id="unknown-id"),
        pytest.param(lambda key: key[:-4] + "AAAA", id="wrong-secret-for-known-id"),
    ],
)
def test_a_key_that_does_not_match_is_invalid_401(path, token):
    key = tenant_key(path)
    err = refusal(list_keys(path), bearer(token(key)))
    assert isinstance(err, InvalidKey)
    assert (err.status, err.code, err.type) == (401, "invalid_api_key", "invalid_request_error")
    assert err.headers()["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_is_refused_naming_its_id_only(path):
    key = tenant_key(path)
    key_id = key.split("_")[1]
    revoke_key(path, key_id)
    err = refusal(list_keys(path), bearer(key))
    assert isinstance(err, RevokedKey)
    assert (err.status, err.code) == (401, "api_key_revoked")
    assert key_id in err.message


def test_revocation_is_not_told_to_a_wrong_secret(path):
    key = tenant_key(path)
    revoke_key(path, key.split("_")[1])
    assert isinstance(refusal(list_keys(path), bearer(key[:-4] + "AAAA")), InvalidKey)


@pytest.mark.parametrize("revoked", [False, True], ids=["wrong-secret", "revoked"])
def test_no_refusal_repeats_the_presented_secret(path, revoked):
    key = tenant_key(path)
    presented = key if revoked else key[:-4] + "AAAA"
    if revoked:
        revoke_key(path, key.split("_")[1])
    err = refusal(list_keys(path), bearer(presented))
    shown = f"{error_body(err)} {err.headers()}"
    assert secret_of(presented) not in shown and secret_of(key) not in shown


def test_an_admin_key_is_an_admin_principal_without_a_tenant(path):
    key = create_key(path, None, admin=True)
    principal = list_keys(path).authenticate(bearer(key))
    assert (principal.admin, principal.tenant) == (True, None)
    principal.check_admin()


def test_an_admin_key_may_not_call_the_model_api(path):
    key = create_key(path, None, admin=True)
    principal = list_keys(path).authenticate(bearer(key))
    with pytest.raises(AdminKeyOnModelApi) as caught:
        principal.check_model("gemma-4")
    assert (caught.value.status, caught.value.code) == (403, "admin_key_not_allowed")


def test_a_tenant_key_may_not_call_the_admin_api(path):
    key = tenant_key(path)
    principal = list_keys(path).authenticate(bearer(key))
    with pytest.raises(AdminKeyRequired) as caught:
        principal.check_admin()
    assert (caught.value.status, caught.value.code) == (403, "admin_key_required")


# --- Tenants' model lists -------------------------------------------------------------------


def test_a_tenant_may_use_the_models_it_lists_only():
    tenant = Tenant(id="team-a", models=("gemma-4-31b-it",))
    assert tenant.may_use("gemma-4-31b-it")
    assert not tenant.may_use("gemma-4-26b-a4b-it")


def test_a_star_allows_every_model_and_alias():
    tenant = Tenant(id="team-a", models=("*",))
    assert tenant.may_use("gemma-4-26b-a4b-it") and tenant.may_use("auto")


def test_an_alias_is_allowed_only_when_listed_itself():
    # An alias may route to any pool, so listing one pool does not grant it.
    assert Tenant(id="t", models=("gemma-4",)).may_use("gemma-4")
    assert not Tenant(id="t", models=("gemma-4-31b-it",)).may_use("gemma-4")


def test_a_model_outside_the_list_is_refused_403_naming_tenant_model_and_list(path):
    key = tenant_key(path, models=("gemma-4",))
    principal = list_keys(path).authenticate(bearer(key))
    with pytest.raises(ModelNotAllowed) as caught:
        principal.check_model("gemma-4-31b-it")
    err = caught.value
    assert (err.status, err.code, err.param) == (403, "model_not_allowed", "model")
    assert "team-a" in err.message and "gemma-4-31b-it" in err.message and "gemma-4" in err.message


# --- Validating the file --------------------------------------------------------------------


def test_a_key_naming_no_tenant_of_the_file_is_refused_naming_the_field(path):
    write_keys_yaml(path, tenant_ref="team-z")
    with pytest.raises(KeyFileError, match=r"keys\.0\.tenant.*team-z"):
        list_keys(path)


def test_repeated_key_ids_are_refused(path):
    repeat = (
        "  - id: 3f9a1c0b7d2e\n"
        f"    sha256: {'cd' * 32}\n"
        "    tenant: team-a\n"
        "    created_at: 2026-11-26T07:41:00Z\n"
    )
    write_keys_yaml(path, extra=repeat)
    with pytest.raises(KeyFileError, match=r"keys\.1\.id.*repeated"):
        list_keys(path)


def test_an_admin_key_with_a_tenant_is_refused(path):
    write_keys_yaml(path, extra="    admin: true\n")
    with pytest.raises(KeyFileError, match=r"keys\.0\.tenant.*admin"):
        list_keys(path)


def test_a_misspelt_field_is_refused_naming_it(path):
    write_keys_yaml(path, extra="    revoked: 2026-11-27T00:00:00Z\n")
    with pytest.raises(KeyFileError, match=r"keys\.0\.revoked"):
        list_keys(path)


def test_an_invalid_file_message_quotes_no_hash(path):
    write_keys_yaml(path, tenant_ref="team-z", extra="    admin: maybe\n")
    with pytest.raises(KeyFileError) as caught:
        list_keys(path)
    assert VALID_HASH not in str(caught.value)


def test_a_yaml_syntax_error_names_the_line_without_quoting_it(path):
    path.write_text(f"keys:\n  - sha256: {VALID_HASH}\n    id: [unclosed\n")
    with pytest.raises(KeyFileError, match="line") as caught:
        list_keys(path)
    assert VALID_HASH not in str(caught.value)


# --- Revoking -------------------------------------------------------------------------------


def test_revoking_an_unknown_key_id_names_it(path):
    tenant_key(path)
    with pytest.raises(UnknownKeyId, match="0123456789ab"):
        revoke_key(path, "0123456789ab")


def test_revoking_with_a_whole_key_does_not_echo_it(path):
    key = tenant_key(path)
    with pytest.raises(UnknownKeyId) as caught:
        revoke_key(path, key)
    assert secret_of(key) not in str(caught.value)


def test_revoking_twice_keeps_the_first_revocation_time(path):
    key_id = tenant_key(path).split("_")[1]
    first = revoke_key(path, key_id).revoked_at
    assert revoke_key(path, key_id).revoked_at == first


# --- Hot reload -----------------------------------------------------------------------------


def test_a_key_created_after_start_is_accepted_once_the_interval_has_passed(path):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, reload_interval_s=2.0, clock=clock)
    new_key = tenant_key(path)
    clock.advance(1.0)
    assert isinstance(refusal(keys.reload_if_due(), bearer(new_key)), InvalidKey)
    clock.advance(1.0)
    assert keys.reload_if_due().authenticate(bearer(new_key)).key_id == new_key.split("_")[1]


def test_a_key_revoked_after_start_is_refused_after_reload(path):
    key = tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    keys.reload_if_due().authenticate(bearer(key))
    revoke_key(path, key.split("_")[1])
    clock.advance(2.0)
    assert isinstance(refusal(keys.reload_if_due(), bearer(key)), RevokedKey)


def test_a_broken_file_keeps_the_last_good_keys_and_says_why(path):
    key = tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    path.write_text("tenants: [{id: team-a, models: ['*'], requests_per_minute: -1}]\n")
    clock.advance(2.0)
    assert keys.reload_if_due().authenticate(bearer(key)).tenant is not None
    assert keys.last_error is not None and "tenants.0.requests_per_minute" in keys.last_error


def test_a_broken_version_is_logged_once_without_key_material(path, caplog):
    key = tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    path.write_text(path.read_text().replace("tenant: team-a", "tenant: team-z"))
    with caplog.at_level(logging.ERROR, logger="service.access.keys_reload"):
        for _ in range(3):
            clock.advance(2.0)
            keys.reload_if_due()
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert "team-z" in caplog.text and hash_key(key) not in caplog.text


def test_a_fixed_file_clears_the_error_and_is_loaded(path):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    good = path.read_text()
    path.write_text("tenants: not-a-list\n")
    clock.advance(2.0)
    keys.reload_if_due()
    path.write_text(good + "\n")
    new_key = tenant_key(path)
    clock.advance(2.0)
    keys.reload_if_due().authenticate(bearer(new_key))
    assert keys.last_error is None


def test_a_briefly_missing_file_keeps_the_last_good_keys(path):
    key = tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    path.unlink()
    clock.advance(2.0)
    assert keys.reload_if_due().authenticate(bearer(key)).key_id == key.split("_")[1]
    assert keys.last_error is not None and "not found" in keys.last_error


def test_the_first_load_of_a_broken_file_raises_config_error_naming_path_and_field(path):
    path.write_text("tenants: [{id: team-a, models: ['*'], priority: urgent}]\n")
    with pytest.raises(ConfigError) as caught:
        KeyFile(path)
    assert str(path) in str(caught.value) and "tenants.0.priority" in str(caught.value)


def test_the_first_load_of_a_missing_file_raises_config_error(path):
    with pytest.raises(ConfigError, match="not found"):
        KeyFile(path)


def test_a_kubernetes_style_secret_update_is_picked_up(tmp_path):
    # The kubelet's layout: keys.yaml -> ..data/keys.yaml, ..data -> a timestamped directory,
    # and an update swaps ..data to a new directory in one rename.
    mount = tmp_path / "mount"
    old, new = mount / "..2026_11_26_07_40_00.1", mount / "..2026_11_26_07_45_00.2"
    old.mkdir(parents=True)
    old_key = tenant_key(old / "keys.yaml")
    (mount / "..data").symlink_to(old.name)
    (mount / "keys.yaml").symlink_to("..data/keys.yaml")
    clock = FakeClock()
    keys = KeyFile(mount / "keys.yaml", clock=clock)

    new.mkdir()
    (new / "keys.yaml").write_text((old / "keys.yaml").read_text())
    new_key = tenant_key(new / "keys.yaml")
    (mount / "..data_tmp").symlink_to(new.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    clock.advance(2.0)

    ring = keys.reload_if_due()
    assert ring.authenticate(bearer(new_key)).key_id == new_key.split("_")[1]
    assert ring.authenticate(bearer(old_key)).key_id == old_key.split("_")[1]


def test_loaded_at_moves_only_when_a_good_version_is_loaded(path):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    first = keys.loaded_at
    path.write_text("keys: [oops]\n")
    clock.advance(2.0)
    keys.reload_if_due()
    assert keys.loaded_at == first


# --- Re-reading off the event loop ----------------------------------------------------------


@pytest.fixture
def parses(monkeypatch):
    """The thread of every YAML parse of a keys file, in order."""
    threads: list[int] = []
    parse = keys_schema.yaml.safe_load

    def recording(text):
        threads.append(threading.get_ident())
        return parse(text)

    monkeypatch.setattr(keys_schema.yaml, "safe_load", recording)
    return threads


async def test_a_request_that_finds_a_reload_due_parses_the_file_off_the_event_loop(path, parses):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    new_key = tenant_key(path)
    parses.clear()
    clock.advance(2.0)
    ring = await keys.refreshed()
    assert ring.authenticate(bearer(new_key)).key_id == new_key.split("_")[1]
    assert parses and threading.get_ident() not in parses


async def test_requests_within_the_interval_parse_nothing(path, parses):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    tenant_key(path)
    parses.clear()
    clock.advance(1.0)
    for _ in range(3):
        await keys.refreshed()
    assert parses == []


async def test_requests_arriving_during_a_reload_share_it(path, parses):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    new_key = tenant_key(path)
    parses.clear()
    clock.advance(2.0)
    rings = await asyncio.gather(*(keys.refreshed() for _ in range(5)))
    assert len(parses) == 1
    assert all(r.authenticate(bearer(new_key)) for r in rings)


def test_the_ring_in_force_is_read_without_touching_the_file(path, parses):
    tenant_key(path)
    clock = FakeClock()
    keys = KeyFile(path, clock=clock)
    new_key = tenant_key(path)
    parses.clear()
    clock.advance(2.0)
    assert isinstance(refusal(keys.current(), bearer(new_key)), InvalidKey)
    assert parses == []
