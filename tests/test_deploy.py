"""Deployment files: the Kubernetes manifests validate against the Kubernetes API schemas, and they, the
scale-out compose file and the HAProxy config agree with the image and the app they deploy."""

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")  # every one, new ones too


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_strictly_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(manifest(name), kubernetes_validate.latest_version(), strict=True)


def test_validation_can_fail():
    broken = manifest("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest():
    assert "deployment.yaml" in MANIFESTS  # the glob found the directory
    assert sorted(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]) == MANIFESTS


def routes() -> set[str]:
    from service.routes import bp

    from flask import Flask

    app = Flask("routes-only")
    app.register_blueprint(bp)
    return {r.rule for r in app.url_map.iter_rules()}


def test_deployment_matches_the_image_and_the_app():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    assert str(container["ports"][0]["containerPort"]) == re.search(r"EXPOSE (\d+)", dockerfile).group(1)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics", "/v1/captions"} <= routes()
    res = container["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"]  # torch threads follow the limit (resourceFieldRef)
    env = {e["name"]: e for e in container["env"]}
    assert env["CAPTIONER_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert all(name.removeprefix("CAPTIONER_").lower() in settings_fields() for name in env)


def settings_fields() -> set[str]:
    from dataclasses import fields

    from service.settings import Settings

    return {f.name for f in fields(Settings)}


def test_service_hpa_and_pdb_select_the_deployments_pods():
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert manifest("service.yaml")["spec"]["selector"].items() <= labels.items()
    assert manifest("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = manifest("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert manifest("hpa.yaml")["spec"]["minReplicas"] > manifest("pdb.yaml")["spec"]["minAvailable"]


def test_balancer_checks_readiness_of_every_compose_replica():
    compose = yaml.safe_load((ROOT / "docker" / "compose.scale.yaml").read_text())
    cfg = (ROOT / "docker" / "haproxy.cfg").read_text()
    replicas = sorted(s for s in compose["services"] if s.startswith("captioner-"))
    assert len(replicas) >= 2
    assert sorted(re.findall(r"^\s*server (\S+) \1:8000 check", cfg, re.M)) == replicas
    assert re.search(r"option httpchk GET (\S+)", cfg).group(1) in routes() & {"/readyz"}
    mount = compose["services"]["balancer"]["volumes"][0]
    assert mount.startswith("./haproxy.cfg:") and mount.endswith(":ro")
