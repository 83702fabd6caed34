"""Load-test profiles and payload generation (loadtests/profiles.py, loadtests/profiles/)."""

from __future__ import annotations

import pytest
import yaml

from loadtests.profiles import (
    PROFILES_DIR,
    Profile,
    ProfileError,
    generate_payloads,
    load_profile,
)

SHIPPED = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def test_the_five_profiles_are_shipped():
    assert SHIPPED == [
        "long-context", "multi-tenant", "multimodal-mix", "shared-prefix", "short-chat"
    ]  # fmt: skip


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name: str):
    profile = load_profile(name)
    assert profile.name == name
    assert generate_payloads(profile, 4, seed=0)


def test_a_profile_loads_from_a_path():
    assert load_profile(PROFILES_DIR / "short-chat.yaml").name == "short-chat"


def test_a_profile_with_both_users_and_qps_is_refused_naming_the_field(tmp_path):
    raw = yaml.safe_load((PROFILES_DIR / "short-chat.yaml").read_text())
    raw["arrival"] = {"users": 4, "qps": 2.0}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=r"(?s)arrival.*users.*qps"):
        load_profile(path)


def test_an_unknown_field_is_refused_by_name():
    raw = yaml.safe_load((PROFILES_DIR / "short-chat.yaml").read_text())
    raw["prompt"]["prompt_tokns"] = {"min": 1, "max": 2}
    with pytest.raises(ValueError, match="prompt_tokns"):
        Profile.model_validate(raw)


def test_payloads_are_reproducible_per_seed_and_differ_across_seeds():
    profile = load_profile("multi-tenant")
    assert generate_payloads(profile, 20, seed=7) == generate_payloads(profile, 20, seed=7)
    assert generate_payloads(profile, 20, seed=7) != generate_payloads(profile, 20, seed=8)


def test_payloads_are_openai_request_bodies_of_roughly_the_asked_length():
    profile = load_profile("short-chat")
    for body in generate_payloads(profile, 20, seed=1):
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["model"] == "gemma-4"
        assert 32 <= body["max_tokens"] <= 256
        (message,) = body["messages"]
        assert 20 * 4 <= len(message["content"]) <= 200 * 4 + 20


def test_shared_prefix_payloads_share_the_prefix_within_a_group():
    profile = load_profile("shared-prefix")
    groups = profile.prompt.prefix_groups
    bodies = generate_payloads(profile, groups * 3, seed=5)
    systems = [b["messages"][0]["content"] for b in bodies]
    assert len(set(systems)) == groups
    for i, system in enumerate(systems):
        assert system == systems[i % groups]
        assert len(system) >= profile.prompt.prefix_tokens * 4
    assert len({b["messages"][1]["content"] for b in bodies}) == len(bodies)


def test_multimodal_mix_embeds_a_png_data_url_in_some_requests():
    bodies = generate_payloads(load_profile("multi-tenant"), 40, seed=3)
    with_image = [b for b in bodies if isinstance(b["messages"][0]["content"], list)]
    assert 0 < len(with_image) < len(bodies)
    url = with_image[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


@pytest.mark.parametrize("name", SHIPPED)
def test_no_profile_file_contains_anything_like_a_key(name: str):
    text = (PROFILES_DIR / f"{name}.yaml").read_text()
    assert "gsk_" not in text.lower()
    for tenant in load_profile(name).tenants:
        assert tenant.key_env.isupper()
