"""Docs that users read stay in step with the code."""

from pathlib import Path

import pytest

from service.pool_settings import AutoscalingSettings, PoolSettings, ReplicaSettings
from service.settings import (
    AccessSettings,
    BoundsSettings,
    MediaSettings,
    RaySettings,
    RoutingSettings,
    ServerSettings,
    Settings,
    TelemetrySettings,
    TracingSettings,
)

DOCS = Path(__file__).parents[2] / "docs"


@pytest.mark.parametrize(
    ("model", "prefix"),
    [
        (Settings, ""),
        (ServerSettings, ""),
        (BoundsSettings, ""),
        (RaySettings, ""),
        (PoolSettings, ""),
        (ReplicaSettings, "replicas."),
        (RoutingSettings, ""),
        (MediaSettings, ""),
        (AutoscalingSettings, ""),
        (AccessSettings, ""),
        (TelemetrySettings, ""),
        (TracingSettings, "tracing."),
    ],
)
def test_every_setting_is_documented(model, prefix):
    text = (DOCS / "configuration.md").read_text()
    missing = [name for name in model.model_fields if f"`{prefix}{name}`" not in text]
    assert not missing, f"undocumented settings: {missing}"
