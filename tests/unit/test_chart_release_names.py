"""Every shipped profile installs under any release name and namespace: it renders, validates,
and every name the chart derives from the release agrees with where it is used."""

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_chart import (
    CHART,
    CUSTOM_KINDS,
    KUBERNETES,
    NAMESPACES,
    PROFILES,
    _crd_validator,
    app_args,
    everything_on,
    merged,
    of_kind,
    one,
    pod_specs,
    ray_groups,
    render,
    rendered,
    selects,
)

RELEASES = [
    "llm",
    "gemma-serve",
    "acme-gemma-serve-prod",  # the chart's name inside it: not repeated
    "platform-team-inference-gateway-for-gemma-models-0001",  # 53 characters, Helm's limit
]
MATRIX = [(p, r, n) for p in PROFILES for r in RELEASES for n in NAMESPACES]
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def values_of(name: str) -> dict[str, Any]:
    """The profile with every optional object on, monitoring included."""
    monitoring = {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    return merged(everything_on(name), {"monitoring": monitoring})


def notes_of(name: str, release: str, namespace: str) -> str:
    """NOTES.txt as `helm install` prints it (render() leaves the .txt files out)."""
    files = rendered(values_of(name), release, namespace)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def fullname(docs: list[dict[str, Any]]) -> str:
    return one(docs, "RayService")["metadata"]["name"]


@pytest.fixture(params=MATRIX, ids=[f"{p}-{r}-{n}" for p, r, n in MATRIX])
def case(request) -> tuple[list[dict[str, Any]], str, str, str]:
    name, release, namespace = request.param
    return render(values_of(name), release, namespace), name, release, namespace


def test_every_object_is_valid_and_named_within_kubernetes_limits(case):
    docs, *_ = case
    for doc in docs:
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and DNS_1123.match(name), f"{doc['kind']} {name!r}"
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    rayservice = one(docs, "RayService")
    assert len(fullname(docs)) <= 47  # KubeRay appends "-serve-svc" and a RayCluster suffix
    errors = list(_crd_validator("ray.io_rayservices.yaml").iter_errors(rayservice))
    assert not errors, [e.message for e in errors]


def test_the_gateways_reach_the_charts_redis_by_its_service_name(case):
    docs, *_ = case
    redis = one(docs, "Service", f"{fullname(docs)}-redis")
    assert app_args(docs)["access"]["redis_url"] == f"redis://{redis['metadata']['name']}:6379/0"
    redis_pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": redis["spec"]["selector"]}, redis_pods)


def test_each_service_selects_the_pods_it_serves(case):
    docs, *_ = case
    pods = [labels for _, _, labels in pod_specs(docs)]
    for service in of_kind(docs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        assert any(selects(selector, labels) for labels in pods), service["metadata"]["name"]


def test_ingress_and_route_send_traffic_to_kuberays_serve_service(case):
    docs, *_ = case
    serve_svc = f"{fullname(docs)}-serve-svc"
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == serve_svc
    for route in of_kind(docs, "HTTPRoute"):
        refs = [ref for rule in route["spec"]["rules"] for ref in rule["backendRefs"]]
        assert {ref["name"] for ref in refs} == {serve_svc}


def test_pod_monitors_select_the_head_and_every_worker_group(case):
    docs, *_ = case
    groups = dict(ray_groups(docs))
    monitors = of_kind(docs, "PodMonitor")
    assert monitors
    for name, group in groups.items():
        labels = group["template"]["metadata"]["labels"] | {
            "ray.io/node-type": "head" if name == "head" else "worker"
        }
        assert any(selects(m["spec"]["selector"], labels) for m in monitors), name


def test_every_secret_a_pod_mounts_is_rendered_or_named_by_the_values(case):
    docs, name, *_ = case
    rendered_secrets = {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    values = merged(yaml.safe_load((CHART / "values.yaml").read_text()), values_of(name))
    named = {
        values["apiKeys"].get("existingSecret"),
        values["modelCache"]["hfTokenSecret"]["name"],
        values["redis"]["externalUrlSecret"]["name"],
    } - {None, ""}
    for owner, spec, _ in pod_specs(docs):
        used = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    used.add(ref["name"])
        assert used <= rendered_secrets | named, (owner, used - rendered_secrets - named)


def test_every_claim_a_pod_mounts_is_rendered(case):
    docs, *_ = case
    claims = {c["metadata"]["name"] for c in of_kind(docs, "PersistentVolumeClaim")}
    for owner, spec, _ in pod_specs(docs):
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, owner


def test_network_policies_admit_the_ray_pods_own_traffic(case):
    docs, *_ = case
    ray_pods = [g["template"]["metadata"]["labels"] for _, g in ray_groups(docs)]
    ingress = [
        p["spec"] for p in of_kind(docs, "NetworkPolicy") if "Ingress" in p["spec"]["policyTypes"]
    ]
    for labels in ray_pods:
        governing = [spec for spec in ingress if selects(spec["podSelector"], labels)]
        assert governing, "no ingress policy covers the Ray pods"
        for spec in governing:
            peers = [p for rule in spec.get("ingress", []) for p in rule.get("from", [])]
            assert any(
                selects(p.get("podSelector", {}), labels) for p in peers if "podSelector" in p
            )


def test_notes_name_the_real_objects(case):
    docs, name, release, namespace = case
    notes = notes_of(name, release, namespace)
    assert f"get rayservice {fullname(docs)}" in notes
    assert f"svc/{fullname(docs)}-serve-svc" in notes
    assert f"kubectl -n {namespace} " in notes
