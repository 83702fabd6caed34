"""`gemma-serve`: up | build-tiny | check-config."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from service import catalog, engine_config
from service.cpu_placement import place_cpu_pools
from service.errors import ConfigError
from service.settings import ServerSettings, Settings, load_settings, refuse_unsafe_access

# How long Serve's proxy lets a request run beyond the gateway's own deadline: the
# gateway answers first, with a proper error.
PROXY_TIMEOUT_MARGIN_S = 5.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        # The load tester is a client of the service, not part of it: run it as its own program
        # (loadtests/runner.py, its own arguments) rather than import it.
        return subprocess.call([sys.executable, "-m", "loadtests.runner", *argv[1:]])
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"gemma-serve: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gemma-serve", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start local Ray and the service; Ctrl-C stops both")
    up.add_argument("--config", type=Path, help="YAML settings file (else $GEMMA_SERVE_CONFIG)")
    up.add_argument("--host", help="bind address (default from settings: 127.0.0.1)")
    up.add_argument("--port", type=int, help="port (default from settings: 8000)")
    up.set_defaults(func=cmd_up)

    tiny = sub.add_parser("build-tiny", help="build the tiny offline Gemma 4 checkpoints")
    tiny.add_argument("--config", type=Path)
    tiny.add_argument("--cache-dir", type=Path, help="default: settings cache_dir")
    tiny.add_argument("--force", action="store_true", help="rebuild even if up to date")
    tiny.set_defaults(func=cmd_build_tiny)

    check = sub.add_parser("check-config", help="print the resolved pools and engine args")
    check.add_argument("config", type=Path, nargs="?", help="YAML file (default: embedded)")
    check.set_defaults(func=cmd_check_config)

    from service.access.keys_cli import add_keys_commands

    add_keys_commands(sub)
    sub.add_parser(
        "loadtest",
        help="run a load-test profile against a service; exits 1 when an SLO gate fails "
        "(gemma-serve loadtest --help)",
    )
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = local_placement(load_settings(args.config))
    resolved = resolved_config(settings)
    for pool in settings.pools:
        try:
            engine_config.llm_config(
                pool, settings.resolved_cache_dir, settings.telemetry, settings.media
            )
        except Exception as exc:  # LLMConfig's own validation, reported per pool
            raise ConfigError(f"pool '{pool.id}' is rejected by Ray Serve LLM: {exc}") from None
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return 0


def resolved_config(settings: Settings) -> dict[str, Any]:
    cache_dir = settings.resolved_cache_dir
    return {
        "server": settings.server.model_dump(mode="json"),
        "routing": settings.routing.model_dump(mode="json"),
        "pools": [
            {
                "id": pool.id,
                "model": pool.catalog_id,
                "modalities": sorted(str(m) for m in catalog.modalities(pool)),
                "llm_config": engine_config.llm_config_kwargs(
                    pool, cache_dir, settings.telemetry, settings.media
                ),
            }
            for pool in settings.pools
        ],
    }


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from service.tinymodels import build_tiny_checkpoints

    cache_dir = args.cache_dir or load_settings(args.config).resolved_cache_dir
    started = time.monotonic()
    paths = build_tiny_checkpoints(cache_dir.expanduser(), force=args.force)
    for variant, path in paths.items():
        print(f"{variant}: {path}")
    print(f"tiny checkpoints ready in {time.monotonic() - started:.1f} s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        server = ServerSettings.model_validate(settings.server.model_dump() | overrides)
        try:
            refuse_unsafe_access(server, settings.access)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        settings = settings.model_copy(update={"server": server})
    if settings.access.keys_file is not None:
        from service.access.keys_reload import KeyFile

        KeyFile(settings.access.keys_file).current()  # a broken file stops us here, not later
    else:
        print(AUTH_OFF_WARNING, file=sys.stderr, flush=True)
    if any(catalog.is_tiny(pool) for pool in settings.pools):
        from service.tinymodels import build_tiny_checkpoints

        build_tiny_checkpoints(settings.resolved_cache_dir)

    stop = threading.Event()
    started = time.monotonic()
    try:
        start_service(settings)
        # After ray.init, which installs its own SIGTERM handler in the driver.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        base = f"http://{settings.server.host}:{settings.server.port}"
        print(_ready_banner(base, settings, time.monotonic() - started), flush=True)
        stop.wait()
    finally:
        # Also on Ctrl-C or SIGTERM during start-up: nothing may be left running.
        print("gemma-serve: shutting down", flush=True)
        stop_service()
    return 0


def start_service(settings: Settings) -> None:
    """Local Ray (or the configured cluster), Serve's proxy, and the application."""
    import ray
    from ray import serve

    from service.app import APP_NAME, build_app
    from service.ingress import ingress_env, wait_until_served

    settings = local_placement(settings)
    if not settings.ray.address:
        # Ray's processes read it from the environment they start with.
        os.environ.update(ingress_env(settings.server))
    local: dict[str, Any] = (
        {}
        if settings.ray.address
        else {
            "num_cpus": settings.ray.num_cpus,
            # Every series (gateway, engines, Serve, autoscaler) on one documented URL.
            "_metrics_export_port": settings.telemetry.metrics_port,
        }
    )
    ray.init(
        address=settings.ray.address,
        include_dashboard=False,
        logging_level=settings.log_level,
        **local,
    )
    serve.start(
        http_options={
            "host": settings.server.host,
            "port": settings.server.port,
            "request_timeout_s": settings.server.request_timeout_s + PROXY_TIMEOUT_MARGIN_S,
        }
    )
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    if not settings.ray.address:
        wait_until_served(settings.server)


@contextmanager
def embedded_default_on_free_ports() -> Iterator[Settings]:
    """The embedded default, started for a script's run and stopped after, on free ports: a
    developer's `make run` may hold 8000 and 8080."""
    from service.local_ports import free_port
    from service.tinymodels import build_tiny_checkpoints

    base = load_settings()
    settings = base.model_copy(
        update={
            "server": base.server.model_copy(update={"port": free_port()}),
            "telemetry": base.telemetry.model_copy(update={"metrics_port": free_port()}),
        }
    )
    build_tiny_checkpoints(settings.resolved_cache_dir)
    start_service(settings)
    try:
        yield settings
    finally:
        stop_service()


def local_placement(settings: Settings) -> Settings:
    """Without a Ray address every pool runs on this host: give CPU pools their own cores."""
    if settings.ray.address:
        return settings
    return place_cpu_pools(settings, sorted(os.sched_getaffinity(0)))


def stop_service() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    # Serve first: replicas shut their vLLM engines down; then Ray's own processes.
    serve.shutdown()
    ray.shutdown()


AUTH_OFF_WARNING = (
    "gemma-serve: WARNING: authentication is OFF (no access.keys_file). Anyone who can reach "
    "this loopback address can use every model. Set access.keys_file before exposing it."
)


def metrics_url(settings: Settings) -> str:
    if settings.ray.address:
        return "on each Ray node's metrics port (see docs/metrics.md)"
    return f"http://127.0.0.1:{settings.telemetry.metrics_port}/metrics"


def auth_line(settings: Settings) -> str:
    keys = settings.access.keys_file
    return f"API keys from {keys}" if keys else "OFF (loopback only; see the warning above)"


def _ready_banner(base: str, settings: Settings, elapsed_s: float) -> str:
    return (
        f"\ngemma-serve is ready at {base}/v1 ({elapsed_s:.0f} s)\n"
        f"  pools: {', '.join(p.id for p in settings.pools)}; "
        f"aliases {', '.join(settings.server.aliases)} route across them\n\n"
        f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "gemma-4", "messages": '
        f'[{{"role": "user", "content": "Hello"}}]}}\'\n\n'
        f"  metrics: {metrics_url(settings)}\n"
        f"  authentication: {auth_line(settings)}\n"
        "  Ctrl-C stops the service.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
