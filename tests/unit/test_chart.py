"""The Helm chart (deploy/helm/gemma-serve): renders, lints and validates offline, and what it
renders is what the service, KubeRay, Ray's autoscaler and Kubernetes accept.

Rendering uses helm-python-sdk (Helm's own Go SDK, no helm binary, no cluster); core kinds are
checked with kubernetes-validate; the RayService with the KubeRay v1.7 CRD schema; the Serve
application's args with the service's own `gemma-serve check-config`.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import runpy
import sys
import types
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from service.access.keys_schema import parse_document
from service.cli import main as gemma_serve
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

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "gemma-serve"
CRDS = ROOT / "deploy" / "helm" / "schemas"
OBSERVABILITY = ROOT / "deploy" / "observability"
CONFIGS = ROOT / "configs"
RELEASE = "gemma-serve"
NAMESPACE = "llm"
# Namespaces every profile must install in (tests/unit/test_chart_release_names.py too).
NAMESPACES = [NAMESPACE, "team-a-prod"]
KUBERNETES = "1.32"
GPU_PROFILES = ["values-h100-fp8.yaml", "values-h100-bf16.yaml"]
PROFILES = [*GPU_PROFILES, "values-dev-cpu.yaml"]
# Each profile mirrors a settings profile of configs/.
MIRRORS = {
    "values-h100-fp8.yaml": "h100-fp8.yaml",
    "values-h100-bf16.yaml": "h100-bf16.yaml",
    "values-dev-cpu.yaml": "embedded.yaml",
}
# Kinds from CRDs: kubernetes-validate knows only core kinds.
CUSTOM_KINDS = {"RayService", "PodMonitor", "PrometheusRule", "HTTPRoute"}
SHA_26B = "1" * 40
SHA_31B = "2" * 40


# Rendering ----------------------------------------------------------------------------------


def profile(name: str | None) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text()) if name else {}


@functools.cache
def _render(values_json: str, release: str, namespace: str) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(
            json.loads(values_json), name=release, namespace=namespace, is_install=True
        )


def rendered(
    values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    return _render(json.dumps(values or {}, sort_keys=True), release, namespace)


def render(
    values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered(values, release, namespace).items()):
        if not path.endswith(".txt"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def render_error(values: dict[str, Any], release: str = RELEASE) -> str:
    with pytest.raises(helm.HelmError) as caught:
        rendered(values, release)
    return str(caught.value)


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values layers as `-f a -f b` would merge them (maps merge, the rest replaces)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out = _merge(out, layer)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def with_pins(values: dict[str, Any]) -> dict[str, Any]:
    """The profile with each GPU pool's checkpoint pinned, as an operator should."""
    pools = [dict(pool) for pool in values["config"]["pools"]]
    for pool, sha in zip(pools, [SHA_26B, SHA_31B], strict=True):
        pool["engine_kwargs"] = {"revision": sha}
    return merged(values, {"config": {"pools": pools}})


def everything_on(name: str) -> dict[str, Any]:
    """The profile with every optional object rendered."""
    return merged(
        profile(name),
        {
            "ingress": {"enabled": True, "className": "nginx", "hosts": ["llm.example.com"]},
            "httpRoute": {
                "enabled": True,
                "parentRefs": [{"name": "inference", "namespace": "gateway"}],
                "hostnames": ["llm.example.com"],
            },
            "modelCache": {
                "warmup": {"enabled": True},
                "hfTokenSecret": {"name": "hf-token"},
            },
        },
    )


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_cluster(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "RayService")["spec"]["rayClusterConfig"]


def serve_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def app_args(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return serve_config(docs)["applications"][0]["args"]


def ray_groups(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, group spec) of the head and of each worker group."""
    cluster = ray_cluster(docs)
    groups = [("head", cluster["headGroupSpec"])]
    return groups + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(owner, pod spec, pod labels) of every pod the release makes."""
    pods = []
    for doc in docs:
        if doc["kind"] == "RayService":
            for name, group in ray_groups([doc]):
                template = group["template"]
                pods.append((f"ray {name}", template["spec"], template["metadata"]["labels"]))
        elif doc["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            template = doc["spec"]["template"]
            pods.append((doc["metadata"]["name"], template["spec"], template["metadata"]["labels"]))
    return pods


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def pool_settings(docs: list[dict[str, Any]]) -> Settings:
    return Settings(**app_args(docs))


# Lint and schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("name", [None, *PROFILES])
def test_chart_lints_clean_in_strict_mode(name, namespace):
    # Helm's lint renders under a release name of its own ("release-name").
    report = helm.lint(
        str(CHART),
        values=profile(name),
        strict=True,
        namespace=namespace,
        kube_version=f"v{KUBERNETES}.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


@pytest.mark.parametrize("name", PROFILES)
def test_core_objects_are_valid_kubernetes_in_strict_mode(name):
    docs = render(everything_on(name))
    checked = set()
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
        checked.add(doc["kind"])
    expected = {"Secret", "Deployment", "Service", "NetworkPolicy", "Ingress", "Job", "ConfigMap"}
    assert expected - {"Secret"} <= checked, checked


@functools.cache
def _crd_validator(kind_file: str) -> jsonschema.protocols.Validator:
    crd = yaml.load((CRDS / kind_file).read_text(), Loader=getattr(yaml, "CSafeLoader", None))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _refuse_unknown_fields(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def _refuse_unknown_fields(node: Any) -> Any:
    """What `kubectl apply --validate=strict` does: an object's unknown field is an error
    (the API server would otherwise prune it silently)."""
    if isinstance(node, list):
        return [_refuse_unknown_fields(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _refuse_unknown_fields(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("name", PROFILES)
def test_rayservice_matches_the_kuberay_1_7_crd(name):
    rayservice = one(render(everything_on(name)), "RayService")
    errors = sorted(
        _crd_validator("ray.io_rayservices.yaml").iter_errors(rayservice), key=lambda e: e.path
    )
    messages = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors]
    assert not messages, "\n".join(messages[:10])


def test_values_schema_refuses_an_unknown_top_level_key():
    message = render_error({"replicaCount": 3})
    assert "additional properties 'replicaCount' not allowed" in message


def test_values_schema_refuses_a_negative_worker_replica_count():
    group = dict(profile("values-h100-fp8.yaml")["workerGroups"][0], minReplicas=-1)
    message = render_error({"workerGroups": [group]})
    assert "'/workerGroups/0/minReplicas': minimum: got -1, want 0" in message


def test_values_schema_refuses_a_negative_pool_replica_count():
    pools = [{"id": "gemma-4-31b-it", "replicas": {"min": -1, "max": 2}}]
    message = render_error({"config": {"pools": pools}})
    assert "'/config/pools/0/replicas/min': minimum: got -1, want 0" in message


@pytest.mark.parametrize("path", [("image",), ("redis", "image")])
def test_values_schema_refuses_the_latest_tag_saying_why(path):
    values: dict[str, Any] = {"tag": "latest"}
    for key in reversed(path):
        values = {key: values}
    message = render_error(values)
    assert f"'/{'/'.join(path)}/tag': 'latest' does not match" in message
    assert "never latest" in message


def test_values_schema_refuses_running_as_root():
    message = render_error({"podSecurity": {"runAsUser": 0}})
    assert "'/podSecurity/runAsUser': minimum: got 0, want 1" in message


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (Settings, ("config",)),
        (ServerSettings, ("config", "server")),
        (BoundsSettings, ("config", "bounds")),
        (RaySettings, ("config", "ray")),
        (RoutingSettings, ("config", "routing")),
        (MediaSettings, ("config", "media")),
        (AccessSettings, ("config", "access")),
        (TelemetrySettings, ("config", "telemetry")),
        (TracingSettings, ("config", "telemetry", "tracing")),
        (PoolSettings, ("config", "pools", "items")),
        (ReplicaSettings, ("config", "pools", "items", "replicas")),
        (AutoscalingSettings, ("config", "pools", "items", "autoscaling")),
    ],
)
def test_values_schema_knows_exactly_the_service_settings(model, path):
    node = json.loads((CHART / "values.schema.json").read_text())
    for key in path:
        node = node["items"] if key == "items" else node["properties"][key]
    assert node["additionalProperties"] is False
    assert set(node["properties"]) == set(model.model_fields)


# The Serve application -------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_serve_config_runs_the_gemma_serve_application_on_every_node(name):
    config = serve_config(render(profile(name)))
    assert config["proxy_location"] == "EveryNode"
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["http_options"]["port"] == 8000
    [app] = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (
        "gemma-serve",
        "/",
        "service.app:from_args",
    )


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node


@pytest.mark.parametrize("name", PROFILES)
def test_serve_args_are_the_profiles_config_with_the_charts_redis_filled_in(name):
    expected = _without_nulls(profile(name)["config"])
    # A null removes a default key (Helm's merge); it must not reach the service as null.
    expected["access"]["redis_url"] = f"redis://{RELEASE}-redis:6379/0"
    assert app_args(render(profile(name))) == expected


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_serve_args_pass_gemma_serve_check_config(name, tmp_path, capsys):
    args = app_args(render(profile(name)))
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(args))
    assert gemma_serve(["check-config", str(path)]) == 0, capsys.readouterr().err
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert [p["id"] for p in resolved["pools"]] == [p["id"] for p in args["pools"]]


@pytest.mark.parametrize(("timeout", "expected"), [(None, 630), (900, 930), (45.5, 75.5)])
def test_serve_proxy_timeout_is_the_request_timeout_plus_30_seconds(timeout, expected):
    values = profile("values-h100-fp8.yaml")
    if timeout is not None:
        values = merged(values, {"config": {"server": {"request_timeout_s": timeout}}})
    assert serve_config(render(values))["http_options"]["request_timeout_s"] == expected


@pytest.mark.parametrize("name", PROFILES)
def test_profile_pools_mirror_their_settings_profile(name):
    settings_profile = yaml.safe_load((CONFIGS / MIRRORS[name]).read_text())
    config = profile(name)["config"]
    assert config["pools"] == settings_profile["pools"]
    if name in GPU_PROFILES:
        assert config["server"] == settings_profile["server"]
        # The chart fills in redis_url with its own Redis, whose name follows the release.
        access = {k: v for k, v in settings_profile["access"].items() if k != "redis_url"}
        assert config["access"] == access


# Ray cluster shape ------------------------------------------------------------------------


def autoscaler_view(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The node types Ray's autoscaler derives from the RayCluster, with Ray's own code."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": f"{RELEASE}-x7k2p", "namespace": NAMESPACE}}
    config = _derive_autoscaling_config_from_ray_cr(cr | {"spec": ray_cluster(docs)})
    return config["available_node_types"]


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_worker_groups_hold_every_pool_at_max_replicas(name):
    docs = render(profile(name))
    node_types = {k: v for k, v in autoscaler_view(docs).items() if k != "headgroup"}
    pools = [p for p in pool_settings(docs).pools if p.device == "gpu"]
    for pool in pools:
        fits = [
            n
            for n in node_types.values()
            if n["resources"].get("GPU", 0) >= pool.tensor_parallel_size
            and n["resources"].get(f"accelerator_type:{pool.accelerator_type}", 0) >= 1
        ]
        assert fits, f"no worker group holds one {pool.id} replica"
    # Worst case, no two replicas share a worker whose GPUs one replica leaves unused.
    for group in node_types.values():
        gpus = group["resources"].get("GPU", 0)
        if gpus:
            needed = sum(p.replicas.max * math.ceil(p.tensor_parallel_size / gpus) for p in pools)
            assert needed <= group["max_workers"], (needed, group["max_workers"])
            needed_min = sum(
                p.replicas.min * math.ceil(p.tensor_parallel_size / gpus) for p in pools
            )
            assert needed_min <= group["min_workers"] or group["min_workers"] == 0


def test_bf16_profile_gives_a_tensor_parallel_replica_one_worker_with_two_gpus():
    docs = render(profile("values-h100-bf16.yaml"))
    [worker] = ray_cluster(docs)["workerGroupSpecs"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    tp = max(p.tensor_parallel_size for p in pool_settings(docs).pools)
    assert limits["nvidia.com/gpu"] == tp == 2


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_workers_declare_their_accelerator_for_scale_from_zero(name):
    docs = render(profile(name))
    for group in ray_cluster(docs)["workerGroupSpecs"]:
        # The quoting Ray's autoscaler parses and KubeRay passes to `ray start --resources`.
        assert group["rayStartParams"]["resources"] == '"{\\"accelerator_type:H100\\":1}"'
        spec = group["template"]["spec"]
        assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
    for node in (v for k, v in autoscaler_view(docs).items() if k != "headgroup"):
        assert node["resources"]["accelerator_type:H100"] == 1
        assert node["resources"]["GPU"] >= 1


def test_dev_cpu_profile_asks_for_no_gpu():
    docs = render(profile("values-dev-cpu.yaml"))
    for owner, spec, _ in pod_specs(docs):
        for container in spec["containers"]:
            for side in ("requests", "limits"):
                assert "nvidia.com/gpu" not in container["resources"][side], owner
    assert all(n["resources"].get("GPU", 0) == 0 for n in autoscaler_view(docs).values())
    pools = pool_settings(docs).pools
    assert {p.device for p in pools} == {"cpu"}
    # A CPU replica's placement bundle is one CPU: the workers hold every pool at its max.
    workers = [n for k, n in autoscaler_view(docs).items() if k != "headgroup"]
    assert sum(p.replicas.max for p in pools) <= sum(
        n["resources"]["CPU"] * n["max_workers"] for n in workers
    )
    for _, group in ray_groups(docs):
        assert group["template"]["spec"]["containers"][0]["image"] == "gemma-serve-cpu:0.1.0"


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_head_runs_no_model_and_exposes_dashboard_and_metrics(name):
    docs = render(profile(name))
    head = ray_cluster(docs)["headGroupSpec"]
    params = head["rayStartParams"]
    assert params["num-gpus"] == "0"
    assert params["dashboard-host"] == "0.0.0.0"
    assert params["metrics-export-port"] == "8080"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert autoscaler_view(docs)["headgroup"]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize("name", PROFILES)
def test_ray_autoscaler_is_on_with_bounds_per_worker_group(name):
    cluster = ray_cluster(render(profile(name)))
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_worker_group_with_min_above_max_is_refused():
    group = dict(profile("values-h100-fp8.yaml")["workerGroups"][0], minReplicas=9, replicas=9)
    assert "minReplicas (9) exceeds maxReplicas (8)" in render_error({"workerGroups": [group]})


def test_a_release_name_longer_than_kuberay_allows_is_cut_to_47_characters():
    release = "a-very-long-release-name-for-a-rayservice-x"
    docs = render({}, release=release)
    assert one(docs, "RayService")["metadata"]["name"] == f"{release}-gemma-serve"[:47]


# Pods: probes, security, resources, images, shutdown ------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_every_ray_container_has_liveness_and_readiness_probes(name):
    docs = render(profile(name))
    for group_name, group in ray_groups(docs):
        ray = group["template"]["spec"]["containers"][0]
        assert ray["livenessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}
        readiness = ray["readinessProbe"]["httpGet"]
        if group_name == "head":
            assert readiness == {"path": "/api/healthz", "port": 52365}
        else:
            # A worker leaves the serve Service as soon as its proxy drains (KubeRay's rule).
            assert readiness == {"path": "/-/healthz", "port": 8000}
            assert ray["readinessProbe"]["failureThreshold"] == 1
    redis = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert redis["livenessProbe"] and redis["readinessProbe"]


@pytest.mark.parametrize("name", PROFILES)
def test_every_pod_and_container_runs_non_root_without_privileges(name):
    docs = render(everything_on(name))
    contexts = []
    for owner, spec, _ in pod_specs(docs):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000, owner
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        contexts += [(f"{owner}/{c['name']}", c["securityContext"]) for c in spec["containers"]]
    autoscaler = ray_cluster(docs)["autoscalerOptions"]["securityContext"]
    contexts.append(("autoscaler", autoscaler))
    for where, context in contexts:
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not context.get("privileged"), where
        assert context["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("name", PROFILES)
def test_every_container_with_a_read_only_image_writes_to_a_tmp_volume(name):
    docs = render(everything_on(name))
    for owner, spec, _ in pod_specs(docs):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            if container["name"] == "redis":
                continue  # Redis writes only to /data
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            where = f"{owner}/{container['name']}"
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            assert env_of(container)["HOME"].startswith("/tmp/"), where
    autoscaler = ray_cluster(docs)["autoscalerOptions"]
    assert "/tmp" in {m["mountPath"] for m in autoscaler["volumeMounts"]}


def test_only_the_autoscaler_sidecar_holds_the_heads_service_account_token():
    docs = render(profile("values-h100-fp8.yaml"))
    cluster = ray_cluster(docs)
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is False
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    [mount] = [
        m for m in cluster["autoscalerOptions"]["volumeMounts"] if m["mountPath"] == token_dir
    ]
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    sources = volume["projected"]["sources"]
    assert any("serviceAccountToken" in s for s in sources)
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources)
    for container in head["containers"]:
        assert token_dir not in {m["mountPath"] for m in container.get("volumeMounts", [])}
    for _, spec, _ in pod_specs(docs):
        assert spec.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("name", PROFILES)
def test_every_container_has_cpu_and_memory_requests_and_limits(name):
    docs = render(everything_on(name))
    resources = [
        (f"{owner}/{c['name']}", c["resources"])
        for owner, spec, _ in pod_specs(docs)
        for c in spec["containers"]
    ]
    resources.append(("autoscaler", ray_cluster(docs)["autoscalerOptions"]["resources"]))
    assert len(resources) >= 5
    for where, res in resources:
        for side in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(side, {})), f"{where}: {side}"


@pytest.mark.parametrize("name", [None, *PROFILES])
def test_no_image_is_unpinned_or_latest(name):
    docs = render(everything_on(name) if name else {})
    images = [c["image"] for _, spec, _ in pod_specs(docs) for c in spec["containers"]]
    assert images
    for image in images:
        repository, _, tag = image.rpartition(":")
        assert "@sha256:" in image or (repository and "/" not in tag), f"{image}: no tag"
        assert tag != "latest", image
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    ray_images = {c["image"] for _, spec, _ in pod_specs(docs) for c in spec["containers"]} - {
        c["image"] for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    }
    assert {i.rpartition(":")[2] for i in ray_images} == {chart["appVersion"]}


def test_an_image_digest_wins_over_the_tag():
    digest = "sha256:" + "a" * 64
    docs = render({"image": {"digest": digest}})
    assert ray_cluster(docs)["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == (
        f"ghcr.io/gemma-serve/gemma-serve@{digest}"
    )


@pytest.mark.parametrize(("drain", "expected_drain"), [(None, 600), (900, 900), (120.5, 121)])
def test_pods_drain_at_least_as_long_as_the_pools_drain_timeout(drain, expected_drain):
    values = profile("values-h100-fp8.yaml")
    if drain is not None:
        # One pool at the given timeout, the other shorter: the longer one counts.
        first, second = values["config"]["pools"]
        pools = [dict(first, drain_timeout_s=drain), dict(second, drain_timeout_s=drain / 2)]
        values = merged(values, {"config": {"pools": pools}})
    docs = render(values)
    assert max(p.drain_timeout_s for p in pool_settings(docs).pools) <= expected_drain
    for group_name, group in ray_groups(docs):
        spec = group["template"]["spec"]
        node_drain = int(env_of(spec["containers"][0])["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"])
        assert node_drain >= expected_drain, group_name
        # Kubernetes kills the pod only after the node has drained.
        assert spec["terminationGracePeriodSeconds"] > node_drain, group_name


# Observability ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "port"), [(n, None) for n in GPU_PROFILES] + [(None, 9091)])
def test_pod_monitors_scrape_each_pods_metrics_export_port(name, port):
    values = merged(profile(name), {"ray": {"metricsPort": port}} if port else {})
    docs = render(values)
    monitors = of_kind(docs, "PodMonitor")
    assert not of_kind(docs, "ServiceMonitor")
    for group_name, group in ray_groups(docs):
        template = group["template"]
        [monitor] = [
            m for m in monitors if selects(m["spec"]["selector"], template["metadata"]["labels"])
        ]
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        ray = template["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ray["ports"]}
        endpoints = [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
        assert "metrics" in endpoints and set(endpoints) <= set(ports), group_name
        assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"])
        assert ports["metrics"] == (port or 8080)


def test_prometheus_rule_carries_the_observability_rules():
    rule = one(render(), "PrometheusRule")
    original = yaml.safe_load((OBSERVABILITY / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == original["groups"]


def test_grafana_dashboard_configmap_is_labelled_for_the_sidecar():
    configmap = one(render(), "ConfigMap", f"{RELEASE}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    original = (OBSERVABILITY / "grafana" / "gemma-serve-dashboard.json").read_text()
    assert configmap["data"]["gemma-serve-dashboard.json"] == original


@pytest.mark.parametrize(
    ("copy", "original"),
    [
        ("gemma-serve-dashboard.json", OBSERVABILITY / "grafana" / "gemma-serve-dashboard.json"),
        ("rules.yaml", OBSERVABILITY / "prometheus" / "rules.yaml"),
    ],
)
def test_chart_files_are_identical_copies_of_the_observability_assets(copy, original):
    # Helm reads nothing outside the chart: after editing the original, copy it here.
    assert (CHART / "files" / copy).read_bytes() == original.read_bytes(), (
        f"cp {original.relative_to(ROOT)} {(CHART / 'files' / copy).relative_to(ROOT)}"
    )


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profiles_point_the_autoscaler_at_the_clusters_prometheus(name):
    args = app_args(render(profile(name)))
    assert args["telemetry"]["prometheus_url"].startswith("http://prometheus-operated.")
    head = ray_cluster(render(profile(name)))["headGroupSpec"]["template"]["spec"]
    env = env_of(head["containers"][0])
    assert env["RAY_PROMETHEUS_HOST"] == args["telemetry"]["prometheus_url"]


# Keys, Redis, network -------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_keys_secret_is_mounted_read_only_where_the_settings_read_it(name):
    docs = render(profile(name))
    keys_file = Path(app_args(docs)["access"]["keys_file"])
    secret_names = set()
    for _, group in ray_groups(docs):
        spec = group["template"]["spec"]
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
        # The whole directory: a subPath mount never sees the Secret change.
        assert mount == {"name": "api-keys", "mountPath": str(keys_file.parent), "readOnly": True}
        [volume] = [v for v in spec["volumes"] if v["name"] == "api-keys"]
        secret_names.add(volume["secret"]["secretName"])
    [secret_name] = secret_names
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    if name == "values-dev-cpu.yaml":
        # The chart creates the file from values: the service must accept it.
        text = base64.b64decode(secrets[secret_name]["data"][keys_file.name]).decode()
        assert parse_document(text, "chart").keys == ()
    else:
        assert secret_name == "gemma-serve-keys" and not secrets


def test_keys_file_outside_the_secret_mount_is_refused():
    values = merged(
        profile("values-h100-fp8.yaml"), {"config": {"access": {"keys_file": "/k.yaml"}}}
    )
    assert "mounted at /etc/gemma-serve/keys/keys.yaml" in render_error(values)


def test_redis_url_that_misses_the_charts_redis_is_refused():
    values = merged(
        profile("values-h100-fp8.yaml"),
        {"config": {"access": {"redis_url": "redis://elsewhere:6379/0"}}},
    )
    assert "the chart's Redis is redis://gemma-serve-redis:6379/0" in render_error(values)


@pytest.mark.parametrize("name", PROFILES)
def test_redis_url_names_the_charts_redis_service(name):
    docs = render(profile(name))
    service = one(docs, "Service", f"{RELEASE}-redis")
    assert app_args(docs)["access"]["redis_url"] == f"redis://{service['metadata']['name']}:6379/0"
    assert service["spec"]["ports"][0]["port"] == 6379


def test_redis_takes_connections_from_this_releases_ray_pods_only():
    docs = render(profile("values-h100-fp8.yaml"))
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-redis")
    redis_pod = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], redis_pod)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in policy["spec"]  # it reaches nothing
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    [peer] = rule["from"]
    ray_pods = [g["template"]["metadata"]["labels"] for _, g in ray_groups(docs)]
    assert "namespaceSelector" not in peer
    assert all(selects(peer["podSelector"], labels) for labels in ray_pods)
    assert not selects(peer["podSelector"], redis_pod)
    other_release = {**ray_pods[0], "app.kubernetes.io/instance": "other"}
    assert not selects(peer["podSelector"], other_release)


def test_redis_url_with_a_password_in_the_args_is_refused():
    values = merged(
        profile("values-h100-fp8.yaml"),
        {
            "redis": {"enabled": False},
            "config": {"access": {"redis_url": "rediss://app:s3cret@redis.example:6380/0"}},
        },
    )
    assert "redis.externalUrlSecret" in render_error(values)


def test_an_external_redis_url_reaches_every_ray_container_from_its_secret(monkeypatch):
    values = merged(
        profile("values-h100-fp8.yaml"),
        {"redis": {"enabled": False, "externalUrlSecret": {"name": "redis-creds"}}},
    )
    docs = render(values)
    assert "redis_url" not in app_args(docs)["access"]
    assert not [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-redis"]
    for _, group in ray_groups(docs):
        [container] = group["template"]["spec"]["containers"]
        assert env_of(container)["GEMMA_SERVE_ACCESS__REDIS_URL"] == {
            "secretKeyRef": {"name": "redis-creds", "key": "redis-url"}
        }
    monkeypatch.setenv("GEMMA_SERVE_ACCESS__REDIS_URL", "rediss://app:s3cret@redis.example:6380/0")
    settings = Settings(**_without_nulls(app_args(docs)))
    assert settings.access.redis_url == "rediss://app:s3cret@redis.example:6380/0"


def test_an_external_redis_url_secret_beside_the_charts_redis_is_refused():
    values = merged(
        profile("values-h100-fp8.yaml"), {"redis": {"externalUrlSecret": {"name": "redis-creds"}}}
    )
    assert "set redis.enabled false" in render_error(values)


def test_ray_pods_reach_each_other_dns_redis_and_no_link_local_address():
    docs = render(profile("values-h100-fp8.yaml"))
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-ray-egress")
    ray_pods = [g["template"]["metadata"]["labels"] for _, g in ray_groups(docs)]
    assert all(selects(policy["spec"]["podSelector"], labels) for labels in ray_pods)
    assert policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    peers = [peer for rule in rules for peer in rule["to"]]
    redis_pod = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert any(selects(p.get("podSelector", {}), redis_pod) for p in peers if "podSelector" in p)
    assert any(selects(p["podSelector"], ray_pods[0]) for p in peers if set(p) == {"podSelector"})
    dns = next(r for r in rules if any("namespaceSelector" in p for p in r["to"]))
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    blocks = [p["ipBlock"] for p in peers if "ipBlock" in p]
    assert blocks and all(
        "169.254.0.0/16" in b.get("except", []) for b in blocks if b["cidr"] == "0.0.0.0/0"
    )


def test_ray_network_policy_opens_the_api_metrics_and_operator_ports():
    docs = render(profile("values-h100-fp8.yaml"))
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-ray")
    for _, group in ray_groups(docs):
        assert selects(policy["spec"]["podSelector"], group["template"]["metadata"]["labels"])
    ports = [{p["port"] for p in rule.get("ports", [])} for rule in policy["spec"]["ingress"]]
    assert {8000} in ports and {8080, 44217, 44227} in ports and {8265, 52365, 8000} in ports


@pytest.mark.parametrize(("ingress", "flag"), [(None, "1"), ("haproxy", "1"), ("serve-proxy", "0")])
def test_every_ray_node_runs_the_ingress_the_config_names(ingress, flag):
    values = profile("values-h100-fp8.yaml")
    if ingress is not None:
        values = merged(values, {"config": {"server": {"ingress": ingress}}})
    for group_name, group in ray_groups(render(values)):
        env = env_of(group["template"]["spec"]["containers"][0])
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == flag, group_name


def test_ray_pods_reach_each_other_on_every_port_for_the_data_plane():
    # Each pool replica serves vLLM's app on a port the OS picks; gateways connect to it
    # directly, from any Ray pod (docs/operator-guide.md, "What runs where").
    docs = render(profile("values-h100-fp8.yaml"))
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-ray")
    open_rules = [rule for rule in policy["spec"]["ingress"] if "ports" not in rule]
    for _, group in ray_groups(docs):
        pod = group["template"]["metadata"]["labels"]
        assert any(
            selects(peer.get("podSelector", {}), pod) and "namespaceSelector" not in peer
            for rule in open_rules
            for peer in rule.get("from", [])
        )


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_disruption_budgets_use_whole_pod_counts(name):
    docs = render(profile(name))
    budgets = of_kind(docs, "PodDisruptionBudget")
    head = ray_cluster(docs)["headGroupSpec"]["template"]["metadata"]["labels"]
    [head_budget] = [b for b in budgets if selects(b["spec"]["selector"], head)]
    assert head_budget["spec"]["minAvailable"] == 1
    for group in ray_cluster(docs)["workerGroupSpecs"]:
        labels = group["template"]["metadata"]["labels"]
        [budget] = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        # KubeRay's pods have no scale subresource: only an integer minAvailable works.
        assert budget["spec"]["minAvailable"] == group["minReplicas"] - 1
        assert "maxUnavailable" not in budget["spec"]


# Model cache and warm-up ----------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_workers_keep_hugging_face_files_on_the_model_cache(name):
    docs = render(profile(name))
    for group in ray_cluster(docs)["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "model-cache"]
        assert env_of(spec["containers"][0])["HF_HOME"].startswith(mount["mountPath"] + "/")
        [volume] = [v for v in spec["volumes"] if v["name"] == "model-cache"]
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert one(docs, "PersistentVolumeClaim", claim)


def test_node_local_cache_mounts_the_host_directory():
    values = {"modelCache": {"type": "hostPath", "hostPath": {"path": "/mnt/nvme/models"}}}
    docs = render(values)
    worker = ray_cluster(docs)["workerGroupSpecs"][0]["template"]["spec"]
    [volume] = [v for v in worker["volumes"] if v["name"] == "model-cache"]
    assert volume["hostPath"] == {"path": "/mnt/nvme/models", "type": "Directory"}
    assert not of_kind(docs, "PersistentVolumeClaim")


@pytest.mark.parametrize("prewarmed", [True, False])
def test_a_prewarmed_cache_keeps_workers_off_the_hub(prewarmed):
    docs = render({"modelCache": {"prewarmed": prewarmed}})
    for group in ray_cluster(docs)["workerGroupSpecs"]:
        env = env_of(group["template"]["spec"]["containers"][0])
        assert (env.get("HF_HUB_OFFLINE") == "1") is prewarmed


def test_hf_token_comes_from_the_named_secret():
    docs = render({"modelCache": {"hfTokenSecret": {"name": "hf", "key": "tok"}}})
    worker = ray_cluster(docs)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert env_of(worker)["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "tok"}}


def test_warmup_job_downloads_each_pools_checkpoint_at_its_pinned_revision(tmp_path, monkeypatch):
    values = merged(
        with_pins(profile("values-h100-fp8.yaml")), {"modelCache": {"warmup": {"enabled": True}}}
    )
    docs = render(values)
    job = one(docs, "Job")
    spec = job["spec"]["template"]["spec"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "model-cache"]
    worker = ray_cluster(docs)["workerGroupSpecs"][0]["template"]["spec"]
    assert volume in worker["volumes"]
    job_env, worker_env = env_of(spec["containers"][0]), env_of(worker["containers"][0])
    assert job_env["HF_HOME"] == worker_env["HF_HOME"]
    [configmap] = [c for c in of_kind(docs, "ConfigMap") if "warmup_cache.py" in c["data"]]
    assert yaml.safe_load(configmap["data"]["config.yaml"]) == app_args(docs)

    for file_name, text in configmap["data"].items():
        (tmp_path / file_name).write_text(text)
    downloads = []
    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = lambda repo_id, revision: downloads.append((repo_id, revision)) or "/x"
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    script = runpy.run_path(str(tmp_path / "warmup_cache.py"))
    assert script["main"]([str(tmp_path / "config.yaml")]) == 0
    assert downloads == [
        ("google/gemma-4-26B-A4B-it", SHA_26B),
        ("RedHatAI/gemma-4-31B-it-FP8-dynamic", SHA_31B),
    ]


def test_warmup_job_gets_a_new_name_when_the_pins_change():
    base = merged(profile("values-h100-fp8.yaml"), {"modelCache": {"warmup": {"enabled": True}}})
    first = one(render(base), "Job")["metadata"]["name"]
    second = one(render(with_pins(base)), "Job")["metadata"]["name"]
    assert first != second and len(second) <= 63


def test_warmup_refuses_a_node_local_cache():
    values = {"modelCache": {"type": "hostPath", "warmup": {"enabled": True}}}
    assert "modelCache.warmup fills a PersistentVolumeClaim" in render_error(values)


def test_chart_without_the_rayservice_still_warms_the_cache():
    values = {"rayService": {"enabled": False}, "modelCache": {"warmup": {"enabled": True}}}
    docs = render(values)
    assert not of_kind(docs, "RayService") and not of_kind(docs, "PodDisruptionBudget")
    assert one(docs, "Job") and one(docs, "PersistentVolumeClaim")


# Routing in -------------------------------------------------------------------------------


def test_ingress_and_http_route_send_traffic_to_kuberays_serve_service():
    docs = render(everything_on("values-h100-fp8.yaml"))
    backend = one(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend == {"service": {"name": f"{RELEASE}-serve-svc", "port": {"number": 8000}}}
    [rule] = one(docs, "HTTPRoute")["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": f"{RELEASE}-serve-svc", "port": 8000}]
    assert rule["timeouts"]["request"] == "630s"


def test_notes_tell_how_to_create_a_key_and_call_the_api():
    notes = rendered(profile("values-h100-fp8.yaml"))["gemma-serve/templates/NOTES.txt"]
    assert f"port-forward svc/{RELEASE}-serve-svc 8000:8000" in notes
    assert "Authorization: Bearer $KEY" in notes
    assert "KEY=$(gemma-serve keys create --file keys.yaml" in notes
    assert "create secret generic gemma-serve-keys" in notes


# Values files -----------------------------------------------------------------------------

YAMLLINT = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 100}\n")


@pytest.mark.parametrize("name", ["values.yaml", *PROFILES, "Chart.yaml"])
def test_values_files_are_yamllint_clean(name):
    problems = list(linter.run((CHART / name).read_text(), YAMLLINT, str(CHART / name)))
    assert not problems, [f"{p.line}:{p.column} {p.message} ({p.rule})" for p in problems]


def test_values_without_keys_are_refused_unless_open_access_is_named():
    message = render_error({"config": {"access": {"keys_file": None}}})
    assert "/config/access" in message
    access = {"keys_file": None, "allow_unauthenticated_network_access": True}
    open_values = {"config": {"access": access}}
    assert rendered(open_values)
