"""The Serve application built from settings."""

import pytest

from service.app import from_args, serve_gateway
from service.errors import ConfigError
from service.settings import Settings


def test_the_gateway_drains_as_long_as_the_longest_pool():
    settings = Settings()
    pools = [
        settings.pools[0].model_copy(update={"drain_timeout_s": 120.0}),
        settings.pools[1].model_copy(update={"drain_timeout_s": 900.0}),
    ]
    gateway = serve_gateway(settings.model_copy(update={"pools": pools}))
    assert gateway._deployment_config.graceful_shutdown_timeout_s == 900.0


def test_a_cluster_deployment_without_keys_is_refused_naming_the_override():
    with pytest.raises(ConfigError, match="allow_unauthenticated_network_access"):
        from_args({"server": {"host": "127.0.0.1"}})  # the proxy listens on the pod anyway


def test_a_cluster_deployment_may_be_opened_by_name():
    assert from_args({"access": {"allow_unauthenticated_network_access": True}}) is not None
