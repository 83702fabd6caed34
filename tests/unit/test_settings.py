from pathlib import Path

import pytest
from pydantic import ValidationError

from service.errors import ConfigError
from service.settings import Settings, load_settings

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch):
    for name in ("GEMMA_SERVE_CONFIG", "GEMMA_SERVE_SERVER__PORT", "GEMMA_SERVE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_no_file_gives_the_embedded_profile_on_loopback():
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    ids = ["gemma-4-26b-a4b-it", "gemma-4-31b-it", "gemma-4-e4b-it"]
    assert [p.id for p in settings.pools] == ids
    assert [p.checkpoint for p in settings.pools] == ["tiny:moe", "tiny:dense", "tiny:multimodal"]
    assert all(p.device == "cpu" for p in settings.pools)


def test_embedded_yaml_matches_the_built_in_defaults():
    written, built_in = load_settings(CONFIGS / "embedded.yaml"), load_settings()
    assert written.pools == built_in.pools
    assert written.routing == built_in.routing
    assert written.server.host == built_in.server.host


def test_config_file_is_taken_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_SERVE_CONFIG", str(write(tmp_path, "server: {port: 9001}\n")))
    assert load_settings().server.port == 9001


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "server: {port: 9001}\n")
    monkeypatch.setenv("GEMMA_SERVE_SERVER__PORT", "9002")
    assert load_settings(path).server.port == 9002


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_SERVE_CACHE_DIR", str(tmp_path))
    assert load_settings().resolved_cache_dir == tmp_path


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("server: {port: 0}\n", "server.port"),
        ("server: {prot: 8000}\n", "server.prot"),
        ("pools: []\n", "pools"),
        ("pools: [{id: x, model: gemma-3-27b}]\n", "pools.0"),
        ("pools: [{id: gemma-4-31b-it, max_model_len: 999999}]\n", "pools.0"),
        ("pools: [{id: gemma-4-31b-it, modalities: [text, audio]}]\n", "pools.0"),
        ("pools: [{id: gemma-4-31b-it, device: cpu, weights: fp8}]\n", "pools.0"),
        ("pools: [{id: gemma-4-31b-it, replicas: {min: 3, max: 2}}]\n", "pools.0.replicas"),
        ("pools: [{id: gemma-4-31b-it}, {id: gemma-4-31b-it}]\n", "pool ids must be unique"),
        ("server: {default_pool: gemma-4-31b-it}\n", "server.default_pool"),
        ("server: {aliases: [gemma-4-31b-it]}\n", "collide with pool ids"),
    ],
)
def test_invalid_config_fails_naming_the_field(tmp_path, yaml_text, named):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, yaml_text))
    assert named in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")


def test_non_mapping_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_empty_file_means_defaults(tmp_path):
    assert load_settings(write(tmp_path, "")) == Settings()


def test_a_routing_rule_naming_an_unknown_pool_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="routing.quality_pool 'gemma-4-70b'"):
        load_settings(write(tmp_path, "routing: {quality_pool: gemma-4-70b}\n"))


def test_an_unknown_routing_step_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="routing.steps.0"):
        load_settings(write(tmp_path, "routing: {steps: [coin_flip]}\n"))


def test_binding_a_network_address_without_api_keys_is_refused():
    with pytest.raises(ValidationError, match="access.keys_file"):
        Settings(server={"host": "0.0.0.0"})


def test_loopback_without_api_keys_is_allowed():
    assert Settings(server={"host": "::1"}).access.keys_file is None


def test_several_gateway_replicas_with_limits_need_redis(tmp_path):
    with pytest.raises(ValidationError, match="access.redis_url"):
        Settings(server={"gateway_replicas": 2}, access={"keys_file": tmp_path / "k.yaml"})


def test_rayservice_args_are_validated_like_a_config_file():
    from service.settings import settings_from_mapping

    with pytest.raises(ConfigError, match=r"(?s)serveConfigV2 args.*pools\.0\.max_model_len"):
        settings_from_mapping({"pools": [{"id": "gemma-4-31b-it", "max_model_len": 0}]},
                              "serveConfigV2 args")  # fmt: skip
