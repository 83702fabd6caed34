"""`gemma-serve check-config`: what an operator runs before a rollout."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.cli import main

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("profile", ["embedded.yaml", "h100-fp8.yaml", "h100-bf16.yaml"])
def test_check_config_prints_every_pool_with_its_engine_args(profile, capsys):
    assert main(["check-config", str(CONFIGS / profile)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    for pool in resolved["pools"]:
        engine = pool["llm_config"]["engine_kwargs"]
        assert engine["max_model_len"] > 0
        assert engine["tool_call_parser"] == "gemma4_forced"
        assert "text" in pool["modalities"]
    assert resolved["routing"]["steps"] == ["capability", "size_shape", "spill_over"]


def test_check_config_shows_what_the_31b_fp8_pool_gets(capsys):
    main(["check-config", str(CONFIGS / "h100-fp8.yaml")])
    pools = {p["id"]: p for p in yaml.safe_load(capsys.readouterr().out)["pools"]}
    dense = pools["gemma-4-31b-it"]["llm_config"]
    assert dense["model_loading_config"]["model_source"] == "RedHatAI/gemma-4-31B-it-FP8-dynamic"
    assert dense["engine_kwargs"]["kv_cache_dtype"] == "fp8"


def test_check_config_refuses_a_bad_file_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [{id: gemma-4-31b-it, tensor_parallel_size: 0}]\n")
    assert main(["check-config", str(bad)]) == 2
    assert "pools.0.tensor_parallel_size" in capsys.readouterr().err


def test_up_on_a_network_address_without_keys_refuses_before_starting_anything(capsys):
    assert main(["up", "--host", "0.0.0.0"]) == 2
    assert "access.keys_file" in capsys.readouterr().err


def test_up_with_a_broken_keys_file_refuses_naming_the_problem(tmp_path, capsys):
    keys = tmp_path / "keys.yaml"
    keys.write_text("tenants: [{id: a}]\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"access: {{keys_file: {keys}}}\n")
    assert main(["up", "--config", str(config)]) == 2
    assert "tenants.0" in capsys.readouterr().err


def test_loadtest_runs_the_load_tester_as_its_own_program():
    # `gemma-serve loadtest` hands over to loadtests.runner without the service importing it.
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "loadtest", "--help"],
        capture_output=True,
        text=True,
        cwd=CONFIGS.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--profile" in done.stdout and "loadtests.runner" in done.stdout
