"""The environment `gemma-serve up` gives local Ray for `server.ingress`."""

from service.ingress import HAPROXY_ENV, ingress_env
from service.settings import ServerSettings

NODE_FOLDER = 57  # Ray adds "/<56 hex node id>" under HAProxy's folder
UNIX_SOCKET_PATH_MAX = 107


def test_haproxy_is_the_default_ingress():
    assert ingress_env(ServerSettings())[HAPROXY_ENV] == "1"


def test_haproxy_files_are_per_port_and_its_socket_path_fits_a_unix_socket():
    env = ingress_env(ServerSettings(port=65535))
    assert "65535" in env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
    assert len(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + NODE_FOLDER <= UNIX_SOCKET_PATH_MAX


def test_haproxy_stats_and_metrics_take_free_ports_not_fixed_ones():
    env = ingress_env(ServerSettings())
    ports = {env["RAY_SERVE_HAPROXY_METRICS_PORT"], env["RAY_SERVE_HAPROXY_STATS_PORT"]}
    assert len(ports) == 2 and not ports & {"9101", "8404"}


def test_the_serve_proxy_ingress_turns_haproxy_off():
    assert ingress_env(ServerSettings(ingress="serve-proxy")) == {HAPROXY_ENV: "0"}
