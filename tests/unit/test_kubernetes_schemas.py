"""Every rendered manifest validates strictly against the oldest and newest Kubernetes the chart claims."""

import kubernetes_validate
import pytest
import yaml

from support.render import RenderError, render
from support.repo import CHART, versions
from support.values import ci_values

CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes OpenAPI; checked in test_validation

VARIANTS = {
    "defaults": {},
    "seed": ci_values("seed"),
    "three replicas": {"replicaCount": 3, "tailscale": {"tags": ["tag:relay"]}},
    "node port": {
        "service": {"type": "NodePort", "nodePort": 30441},
        "relay": {"staticEndpoints": ["192.0.2.1:30441"]},
    },
    "everything": {
        "auth": {"authKey": "", "oauth": {"clientId": "i", "clientSecret": "s"}},
        "tailscale": {"tags": ["tag:relay"], "loginServer": "https://hs.example", "userspace": False},
        "metrics": {"enabled": True, "dashboard": {"enabled": True}},
        "service": {
            "loadBalancerClass": "example.com/lb",
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
            "externalTrafficPolicy": "Cluster",
        },
        "imagePullSecrets": [{"name": "r"}],
        "priorityClassName": "high",
        "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"a": "b"},
        "extraEnv": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
    },
}
# The opt-in ValidatingAdmissionPolicies (admissionregistration.k8s.io/v1): from KUBE_VERSION_POLICIES only.
POLICIES = {"rbac": {"relayRecreatesStateSecrets": True, "refuseScalingOutsideHelm": True}}


def claimed_versions():
    pins = versions()
    return [pins["KUBE_VERSION_OLDEST"], pins["KUBE_VERSION_NEWEST"]]


def test_chart_claims_the_oldest_version_we_validate_and_no_upper_bound():
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    assert kube_version == f">={versions()['KUBE_VERSION_OLDEST']}-0", (
        f"kubeVersion {kube_version!r}: only a lower bound (an upper one fails helm upgrade after a cluster upgrade)"
    )


@pytest.mark.parametrize("kube_version", ["1.27.9"])
def test_an_older_cluster_is_refused_by_kube_version(kube_version):
    with pytest.raises(RenderError) as failure:
        render(args=("--kube-version", kube_version))
    assert "chart requires kubeVersion" in str(failure.value)


@pytest.mark.parametrize("kube_version", ["1.38.0", "1.45.2", "2.0.0"])
def test_a_newer_cluster_than_any_we_know_still_renders(kube_version):
    assert [m["kind"] for m in render(args=("--kube-version", kube_version)) if m["kind"] == "StatefulSet"]


def test_the_admission_policies_name_the_kubernetes_version_they_need():
    below = f"1.{int(versions()['KUBE_VERSION_POLICIES'].split('.')[1]) - 1}.9"
    for value in POLICIES["rbac"]:
        with pytest.raises(RenderError) as failure:
            render({"rbac": {value: True}}, args=("--kube-version", below))
        assert (
            f"rbac.{value}: needs a ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1), which Kubernetes "
            "serves from 1.30" in str(failure.value)
        )
    kinds = [m["kind"] for m in render(POLICIES, args=("--kube-version", versions()["KUBE_VERSION_POLICIES"]))]
    assert kinds.count("ValidatingAdmissionPolicy") == 2


@pytest.mark.parametrize("kube_version", [versions()["KUBE_VERSION_POLICIES"], versions()["KUBE_VERSION_NEWEST"]])
def test_the_admission_policies_validate_strictly(kube_version):
    for manifest in render(POLICIES, args=("--kube-version", kube_version)):
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{manifest['kind']}/{manifest['metadata']['name']} is invalid for Kubernetes {kube_version}: "
                f"{error.message} at {list(error.path)}"
            )


@pytest.mark.parametrize("kube_version", claimed_versions())
@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_manifests_validate_strictly(values, kube_version):
    for manifest in render(values, args=("--kube-version", kube_version)):
        if manifest["kind"] in CRD_KINDS:
            continue
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} is invalid for Kubernetes {kube_version}: {error.message} at {list(error.path)}")
