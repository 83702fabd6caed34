"""The Serve application built from settings."""

from service.app import serve_gateway
from service.settings import Settings


def test_the_gateway_drains_as_long_as_the_longest_pool():
    settings = Settings()
    pools = [
        settings.pools[0].model_copy(update={"drain_timeout_s": 120.0}),
        settings.pools[1].model_copy(update={"drain_timeout_s": 900.0}),
    ]
    gateway = serve_gateway(settings.model_copy(update={"pools": pools}))
    assert gateway._deployment_config.graceful_shutdown_timeout_s == 900.0
