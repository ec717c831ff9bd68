"""Every rendered manifest validates strictly against the oldest and newest Kubernetes the chart claims."""
import kubernetes_validate
import pytest
import yaml

from chart_render import CHART, render, versions

CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes OpenAPI; checked in test_validation

VARIANTS = {
    "defaults": {},
    "seed": {"relay": {"port": 61441},
             "service": {"annotations": {"metallb.io/loadBalancerIPs": "fdc9:b01a:9d26:0:2::3,172.16.2.3"},
                         "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}},
    "three replicas": {"replicaCount": 3, "tailscale": {"tags": ["tag:relay"]}},
    "node port": {"service": {"type": "NodePort", "nodePort": 30441}, "relay": {"staticEndpoints": ["192.0.2.1:30441"]}},
    "everything": {
        "auth": {"authKey": "", "oauth": {"clientId": "i", "clientSecret": "s"}},
        "tailscale": {"tags": ["tag:relay"], "loginServer": "https://hs.example", "userspace": False},
        "metrics": {"enabled": True}, "rbac": {"relayRecreatesStateSecrets": True, "refuseScalingOutsideHelm": True},
        "service": {"loadBalancerClass": "example.com/lb", "loadBalancerSourceRanges": ["10.0.0.0/8"],
                    "externalTrafficPolicy": "Cluster"},
        "imagePullSecrets": [{"name": "r"}], "priorityClassName": "high",
        "tolerations": [{"operator": "Exists"}], "nodeSelector": {"a": "b"},
        "extraEnv": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
    },
}


def claimed_versions():
    pins = versions()
    return [pins["KUBE_VERSION_OLDEST"], pins["KUBE_VERSION_NEWEST"]]


def test_chart_claims_the_versions_we_validate():
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    oldest, newest = claimed_versions()
    assert kube_version.startswith(f">={oldest}-0"), kube_version
    major, minor, _ = newest.split(".")
    assert f"<{major}.{int(minor) + 1}.0-0" in kube_version, kube_version


@pytest.mark.parametrize("kube_version", claimed_versions())
@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_manifests_validate_strictly(values, kube_version):
    for manifest in render(values):
        if manifest["kind"] in CRD_KINDS:
            continue
        where = f'{manifest["kind"]}/{manifest["metadata"]["name"]}'
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} is invalid for Kubernetes {kube_version}: {error.message} at {list(error.path)}")
