"""deploy/k8s validates offline against the schemas of Kubernetes 1.33 (strict: no unknown fields) and keeps our
rules: non-root, a read-only root filesystem, resource requests and limits, liveness and readiness probes on the
endpoints we serve, a PodDisruptionBudget over the dispatchers, and a janitor CronJob that never overlaps."""

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy/k8s"
KUBERNETES_VERSION = "1.33.0"
PROBE_PATHS = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """``(file, object)`` for every Kubernetes object in deploy/k8s (the kustomization is kustomize's, not the
    API's, and is read by :func:`test_the_kustomization_lists_every_manifest`)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                out.append((path.name, doc))
    return out


def pod_template(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return None


def workloads() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(f, doc, t) for f, doc in manifests() if (t := pod_template(doc)) is not None]


def schema_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("fname,doc", manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_matches_the_kubernetes_schema(fname, doc):
    assert schema_errors(doc) is None, f"{fname}: {schema_errors(doc)}"


def test_the_schema_check_can_fail():
    doc = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True  # misspelt, misplaced
    assert schema_errors(doc)
    doc = copy.deepcopy(next(d for _, d in manifests() if d["kind"] == "PodDisruptionBudget"))
    doc["spec"]["minAvailable"] = [1]
    assert schema_errors(doc)


def test_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_pods_run_as_non_root_with_a_read_only_root_filesystem_and_bounded_resources():
    assert {doc["kind"] for _, doc, _ in workloads()} == {"Deployment", "CronJob"}
    for fname, _, template in workloads():
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, fname
        assert spec.get("automountServiceAccountToken") is False, fname
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{fname} {c['name']}: read-only root filesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{fname} {c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{fname} {c['name']}"
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{fname} {c['name']}: a writable /tmp beside the read-only root"
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{fname} {c['name']}: requests"
            assert "memory" in resources.get("limits", {}), f"{fname} {c['name']}: a memory limit"


def test_serving_containers_have_liveness_and_readiness_probes_on_their_endpoints():
    served = 0
    for fname, doc, template in workloads():
        if doc["kind"] != "Deployment":
            continue
        for c in template["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            probes = {k: v for k, v in c.items() if k.endswith("Probe")}
            assert {"livenessProbe", "readinessProbe"} <= set(probes), f"{fname}: liveness and readiness"
            for kind, probe in probes.items():
                assert probe["httpGet"]["path"] == PROBE_PATHS[kind], f"{fname} {kind}"
                assert probe["httpGet"]["port"] in ports, f"{fname} {kind}: port {probe['httpGet']['port']}"
            served += 1
    assert served == 2  # the dispatcher and the server


def test_the_disruption_budget_covers_the_dispatchers_and_allows_a_drain():
    pdbs = [doc for _, doc in manifests() if doc["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1
    pdb = pdbs[0]
    dispatcher = next(doc for _, doc in manifests() if doc["kind"] == "Deployment"
                      and doc["metadata"]["name"] == "hookpost-dispatcher")
    labels = dispatcher["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the PodDisruptionBudget selects the dispatcher pods"
    assert 1 <= pdb["spec"]["minAvailable"] < dispatcher["spec"]["replicas"], "keeps one, lets one go"


def test_the_janitor_cronjob_never_overlaps():
    jobs = [doc for _, doc in manifests() if doc["kind"] == "CronJob"]
    assert [j["metadata"]["name"] for j in jobs] == ["hookpost-janitor"]
    assert jobs[0]["spec"]["concurrencyPolicy"] == "Forbid"
    assert jobs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
