"""One UDP Service per replica, with every service.* value applied."""

import pytest

from support.render import FULLNAME, find, one, render
from support.values import ci_values

# the write-up's setup (chart/ci/seed-values.yaml): a dual-stack MetalLB Service with fixed addresses
SEED = ci_values("seed")


def relay_services(manifests):
    return [s for s in find(manifests, "Service") if s["spec"].get("type") in ("LoadBalancer", "NodePort")]


def test_seed_setup_renders_the_dual_stack_metallb_service_it_needed():
    service = one(render(SEED), "Service", f"{FULLNAME}-0")
    assert service["metadata"]["annotations"] == SEED["service"]["annotations"]
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["ipFamilyPolicy"] == SEED["service"]["ipFamilyPolicy"] == "RequireDualStack"
    assert spec["ipFamilies"] == SEED["service"]["ipFamilies"]
    assert spec["ports"] == [{"name": "relay", "protocol": "UDP", "port": SEED["relay"]["port"], "targetPort": "relay"}]
    assert spec["selector"]["statefulset.kubernetes.io/pod-name"] == f"{FULLNAME}-0"


@pytest.mark.parametrize("replicas", [1, 3])
def test_one_service_per_replica_selects_only_its_pod(replicas):
    services = relay_services(render({"replicaCount": replicas}))
    assert [s["metadata"]["name"] for s in services] == [f"{FULLNAME}-{i}" for i in range(replicas)]
    for i, service in enumerate(services):
        assert service["spec"]["selector"] == {
            "app.kubernetes.io/name": "tailscale-peer-relay",
            "app.kubernetes.io/instance": "relay",
            "app.kubernetes.io/component": "relay",
            "statefulset.kubernetes.io/pod-name": f"{FULLNAME}-{i}",
        }


def test_defaults():
    spec = one(render(), "Service", f"{FULLNAME}-0")["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"][0]["port"] == 40000
    for absent in ("ipFamilyPolicy", "ipFamilies", "loadBalancerClass", "loadBalancerSourceRanges"):
        assert absent not in spec, f"{absent} should be left to the cluster by default"
    assert "nodePort" not in spec["ports"][0]


@pytest.mark.parametrize(
    "service, key, expected",
    [
        ({"loadBalancerClass": "metallb.io/metallb"}, "loadBalancerClass", "metallb.io/metallb"),
        ({"loadBalancerSourceRanges": ["192.168.0.0/16"]}, "loadBalancerSourceRanges", ["192.168.0.0/16"]),
        ({"externalTrafficPolicy": "Cluster"}, "externalTrafficPolicy", "Cluster"),
        ({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}, "ipFamilies", ["IPv6"]),
        ({"ipFamilyPolicy": "PreferDualStack"}, "ipFamilyPolicy", "PreferDualStack"),
    ],
)
def test_service_values_are_applied(service, key, expected):
    spec = one(render({"service": service}), "Service", f"{FULLNAME}-0")["spec"]
    assert spec[key] == expected


def test_annotations_and_labels_reach_every_replica_service():
    values = {
        "replicaCount": 2,
        "service": {"annotations": {"io.cilium/lb-ipam-ips": "10.0.0.5"}, "labels": {"lan": "yes"}},
    }
    for service in relay_services(render(values)):
        assert service["metadata"]["annotations"] == {"io.cilium/lb-ipam-ips": "10.0.0.5"}
        assert service["metadata"]["labels"]["lan"] == "yes"


def test_node_port_service():
    values = {"service": {"type": "NodePort", "nodePort": 30441}, "relay": {"staticEndpoints": ["192.168.1.10:30441"]}}
    spec = one(render(values), "Service", f"{FULLNAME}-0")["spec"]
    assert spec["type"] == "NodePort"
    assert spec["ports"][0]["nodePort"] == 30441


def test_headless_service_governs_the_statefulset():
    headless = one(render(), "Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["ports"] == [
        {"name": "http-local", "protocol": "TCP", "port": 9002, "targetPort": "http-local"}
    ]
