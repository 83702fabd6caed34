"""What the serving benchmarks share: the environment, the machine, percentiles, process CPU,
stopping a stack, a Ray Serve LLM driver (its default path or its direct streaming), and the
command line, the run over each stack and the JSON report of a benchmark that starts stacks."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from service.local_ports import free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# vLLM's process titles (setproctitle) for its engine core and its model-runner workers.
ENGINE_TITLES = ("VLLM::EngineCore", "VLLM::Worker")


def bench_env() -> dict[str, str]:
    """This environment, with caches inside the checkout and nothing fetched from the net."""
    cache = ROOT / ".cache"
    env = dict(os.environ)
    for name, value in {
        "GEMMA_SERVE_CACHE_DIR": str(cache / "gemma-serve"),
        "RAY_TMPDIR": str(cache / "ray"),
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "XDG_CACHE_HOME": str(cache / "xdg"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        # A CPU engine's KV cache, as gemma-serve gives each tiny pool (cpu_kv_cache_gib);
        # vLLM's default is a share of the machine's memory, which two engines do not fit.
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }.items():
        env.setdefault(name, value)
    return env


def dense_checkpoint(env: dict[str, str]) -> Path:
    from service.tinymodels import build_tiny_checkpoints

    return build_tiny_checkpoints(Path(env["GEMMA_SERVE_CACHE_DIR"]))["dense"]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); NaN
    for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, object]:
    return {
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


# --- CPU time of a process tree ------------------------------------------------------------


@dataclass(frozen=True)
class ProcessCpu:
    title: str
    cpu_s: float  # user + system, this process only

    @property
    def is_engine(self) -> bool:
        return self.title.startswith(ENGINE_TITLES)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def process_tree(root: int) -> dict[int, ProcessCpu]:
    """Every live process under `root` (itself included) with its CPU time so far."""
    stats = {
        int(entry.name): stat
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None
    }
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = ProcessCpu(_title(pid), stats[pid][1])
            todo.extend(children.get(pid, []))
    return tree


@dataclass(frozen=True)
class CpuSpent:
    engine_s: float  # vLLM's engine-core and worker processes
    outside_s: float  # every other process of the stack: servers, proxies, Ray
    engine_processes: int
    processes: int


def cpu_spent(before: dict[int, ProcessCpu], after: dict[int, ProcessCpu]) -> CpuSpent:
    """CPU each process spent between two `process_tree` readings (one born between them
    counts from zero; one that died between them is lost, which a steady stack avoids)."""
    engine = outside = 0.0
    for pid, now in after.items():
        then = before.get(pid)
        spent = now.cpu_s - (then.cpu_s if then is not None and then.title == now.title else 0)
        if now.is_engine:
            engine += spent
        else:
            outside += spent
    return CpuSpent(
        engine_s=engine,
        outside_s=outside,
        engine_processes=sum(p.is_engine for p in after.values()),
        processes=len(after),
    )


# --- stacks --------------------------------------------------------------------------------


def stop(process: subprocess.Popen) -> None:
    # SIGINT lets a driver shut Serve and Ray down; the group kill is a backstop.
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def direct_streaming_env(env: dict[str, str], haproxy: Path) -> dict[str, str]:
    """Ray's direct streaming behind HAProxy, with HAProxy's files (in `haproxy`) and ports
    our own: its defaults are fixed paths in /tmp and fixed ports. Ray puts the files in a
    folder named by the node id under these, and a socket path may be 107 bytes at most: keep
    `haproxy` short (a folder in /tmp, not in the checkout)."""
    return env | {
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


def ray_llm_config(
    model_id: str,
    checkpoint: Path,
    engine_kwargs: dict,
    max_ongoing: int,
    env_vars: dict[str, str] | None = None,
):
    from ray.serve.llm import LLMConfig

    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(checkpoint)},
        engine_kwargs=engine_kwargs,
        deployment_config={
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "max_ongoing_requests": max_ongoing,
        },
        placement_group_config={"bundles": [{"CPU": 1}]},
        runtime_env={"env_vars": env_vars or {}},
    )


def serve_ray_llm(port: int, llm_config, name: str) -> int:
    """Serves `build_openai_app` with one model until SIGINT/SIGTERM (a benchmark's driver
    subprocess; which path Ray takes comes from the environment it was started with)."""
    import threading

    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    stopping = threading.Event()
    ray.init(num_cpus=8, include_dashboard=False)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            grpc_options={"port": free_port()},
        )
        serve.run(build_openai_app({"llm_configs": [llm_config]}), name=name, route_prefix="/")
        print(f"{name}: ready", flush=True)
        stopping.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


T = TypeVar("T")


def add_stack_options(
    parser: argparse.ArgumentParser, name: str, settle_s: float, start_timeout_s: float
) -> None:
    """The options of a benchmark that starts stacks: the pause after start-up, how long a
    start may take, and where the JSON results go."""
    parser.add_argument(
        "--settle-s", type=float, default=settle_s, help="pause after start-up (or warm-up)"
    )
    parser.add_argument("--start-timeout-s", type=float, default=start_timeout_s)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON results (default: benchmarks/results/{name}-<date>.json)",
    )


async def run_each(
    names: Sequence[str], run: Callable[[str], Awaitable[T]]
) -> tuple[list[T], dict[str, str]]:
    """Each stack in turn; one that fails is reported and the others still run."""
    results: list[T] = []
    failures: dict[str, str] = {}
    for name in names:
        try:
            results.append(await run(name))
        except Exception as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name}: {failures[name]}", file=sys.stderr, flush=True)
    return results, failures


def write_report(name: str, argv: Sequence[str], out: Path | None, report: dict[str, Any]) -> Path:
    """The results as JSON, with the date and the command that made them."""
    out = out or ROOT / "benchmarks" / "results" / f"{name}-{date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", f"benchmarks/{name}.py", *argv])
    full = {"date": date.today().isoformat(), "command": command, **report}
    out.write_text(json.dumps(full, indent=2, allow_nan=True) + "\n")
    print(f"\nwritten: {out}")
    return out
