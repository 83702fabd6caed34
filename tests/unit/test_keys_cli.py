"""`gemma-serve keys create | list | revoke`, as an operator or a script uses them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from service.access.authentication import hash_key
from service.access.keys_cli import add_keys_commands
from service.access.keys_editing import list_keys


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="gemma-serve")
    add_keys_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(["keys", *argv])
    return args.func(args)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


def create(path: Path, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    assert run("create", "--file", str(path), *options) == 0
    return capsys.readouterr().out.strip()


def test_create_prints_exactly_the_key_on_one_stdout_line(path, capsys):
    assert run("create", "--file", str(path), "--tenant", "team-a", "--models", "*") == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(r"gsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n", out)
    assert "cannot be shown" in err


def test_the_printed_key_authenticates_with_the_limits_given(path, capsys):
    key = create(path, capsys, "--tenant", "team-a", "--models", "gemma-4,auto", "--rpm", "60")
    tenant = list_keys(path).authenticate(f"Bearer {key}").tenant
    assert tenant is not None
    assert (tenant.models, tenant.requests_per_minute) == (("gemma-4", "auto"), 60)


def test_create_admin_makes_an_admin_key(path, capsys):
    key = create(path, capsys, "--admin", "--note", "on-call")
    assert list_keys(path).authenticate(f"Bearer {key}").admin


def test_create_admin_with_tenant_limits_exits_2_naming_the_flags(path, capsys):
    assert run("create", "--file", str(path), "--admin", "--rpm", "5") == 2
    assert "--rpm" in capsys.readouterr().err
    assert not path.exists()


def test_create_needs_a_tenant_or_admin(path):
    with pytest.raises(SystemExit) as caught:
        run("create", "--file", str(path))
    assert caught.value.code == 2


def test_create_takes_a_tenant_or_admin_not_both(path):
    with pytest.raises(SystemExit):
        run("create", "--file", str(path), "--tenant", "team-a", "--admin")


def test_the_file_must_be_named(capsys):
    with pytest.raises(SystemExit):
        run("list")
    assert "--file" in capsys.readouterr().err


def test_a_new_tenant_without_models_exits_2_with_one_line(path, capsys):
    assert run("create", "--file", str(path), "--tenant", "team-a") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "models" in err


def test_list_shows_keys_and_tenant_limits_but_no_hash(path, capsys):
    key = create(path, capsys, "--tenant", "team-a", "--models", "*", "--tpm", "100000")
    assert run("list", "--file", str(path)) == 0
    out = capsys.readouterr().out
    assert key.split("_")[1] in out and "team-a" in out and "100000" in out
    assert hash_key(key) not in out and key.split("_", 2)[2] not in out


def test_list_of_a_missing_file_exits_2_naming_it(path, capsys):
    assert run("list", "--file", str(path)) == 2
    assert str(path) in capsys.readouterr().err


def test_revoke_marks_the_key_revoked(path, capsys):
    key = create(path, capsys, "--tenant", "team-a", "--models", "*")
    key_id = key.split("_")[1]
    assert run("revoke", "--file", str(path), key_id) == 0
    (entry,) = list_keys(path).keys()
    assert entry.revoked_at is not None


def test_revoke_of_an_unknown_id_exits_2_with_a_message(path, capsys):
    create(path, capsys, "--tenant", "team-a", "--models", "*")
    assert run("revoke", "--file", str(path), "0123456789ab") == 2
    out, err = capsys.readouterr()
    assert out == "" and "no key 0123456789ab" in err
