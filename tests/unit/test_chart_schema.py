"""The chart's values.schema.json is generated (`make chart-schema`): `config` from the service's
settings models, everything else from deploy/helm/chart_schema/values.schema.base.json. What it
refuses, Helm refuses before rendering anything."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from deploy.helm.chart_schema import generate
from tests.unit.test_chart import CHART, PROFILES, merged, profile, render_error, rendered

SCHEMA_FILE = CHART / "values.schema.json"


def committed_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def test_committed_schema_is_the_generators_output():
    assert SCHEMA_FILE.read_text() == generate.generated_text(), (
        f"{SCHEMA_FILE.relative_to(CHART.parents[2])} is out of date with service/settings.py or "
        "deploy/helm/chart_schema/values.schema.base.json: run `make chart-schema`"
    )


def test_schema_is_self_contained_draft_07():
    schema = committed_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    text = SCHEMA_FILE.read_text()
    assert '"$ref"' not in text and '"$defs"' not in text


@pytest.mark.parametrize("name", ["values.yaml", *PROFILES])
def test_every_shipped_profile_validates_against_the_schema(name):
    # Helm validates the profile merged over the chart's defaults.
    values = merged(profile("values.yaml"), profile(name))
    validator = jsonschema.Draft7Validator(committed_schema())
    errors = [f"/{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(values)]
    assert not errors, errors
    assert rendered(profile(name))


@pytest.mark.parametrize(
    ("config", "where", "key"),
    [
        ({"server": {"portt": 8001}}, "/config/server", "portt"),
        ({"routing": {"stepz": []}}, "/config/routing", "stepz"),
        (
            {"telemetry": {"tracing": {"sample_rate": 0.1}}},
            "/config/telemetry/tracing",
            "sample_rate",
        ),
        (
            {"pools": [{"id": "gemma-4-31b-it", "autoscaling": {"polcy": "slo"}}]},
            "/config/pools/0/autoscaling",
            "polcy",
        ),
    ],
)
def test_schema_refuses_an_unknown_settings_key(config, where, key):
    message = render_error({"config": config})
    assert f"at '{where}': additional properties '{key}' not allowed" in message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"server": {"gateway_replicas": "two"}}, "'/config/server/gateway_replicas': got string"),
        ({"routing": {"max_kv_usage": 1.5}}, "'/config/routing/max_kv_usage': maximum: got 1.5"),
        ({"log_level": "TRACE"}, "'/config/log_level'"),
    ],
)
def test_schema_refuses_a_settings_value_of_the_wrong_type_or_range(config, expected):
    assert expected in render_error({"config": config})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"server": {"port": 8001}}, "'/config/server/port': value must be 8000"),
        ({"access": {"redis_url": "http://redis:6379"}}, "does not match pattern '^rediss?://'"),
    ],
)
def test_schema_keeps_the_charts_own_checks_on_the_settings(config, expected):
    assert expected in render_error({"config": config})


def test_a_chart_check_on_a_setting_the_service_lacks_is_refused():
    additions = {"properties": {"server": {"properties": {"portt": {"const": 8000}}}}}
    with pytest.raises(generate.SchemaError, match=r"config\.server: .*\['portt'\]"):
        generate.overlay(generate.settings_schema(), additions)


class _Node(BaseModel):
    children: list[_Node] = []


class _Pair(BaseModel):
    pair: tuple[int, str]


def test_a_recursive_settings_model_is_refused():
    with pytest.raises(generate.SchemaError, match="refers to itself"):
        generate.settings_schema(_Node)


def test_a_schema_helms_draft_07_validator_would_ignore_is_refused():
    with pytest.raises(generate.SchemaError, match="prefixItems is not JSON Schema draft-07"):
        generate.settings_schema(_Pair)
