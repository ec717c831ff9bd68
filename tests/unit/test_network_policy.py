"""Opt-in NetworkPolicies: the relay takes only its UDP port (and the health port from whom the user names); the hook
and test pods take nothing and reach only DNS and the API server."""

import pytest

from support.render import FULLNAME, RenderError, find, one, render

ON = {"networkPolicy": {"enabled": True}}
SELECTOR = {"app.kubernetes.io/name": "tailscale-peer-relay", "app.kubernetes.io/instance": "relay"}


def test_no_network_policy_by_default():
    assert not find(render(), "NetworkPolicy")


def test_the_relay_takes_only_its_udp_port_from_anywhere_and_may_reach_anything():
    policy = one(render({**ON, "relay": {"port": 61441}}), "NetworkPolicy", FULLNAME)["spec"]
    assert policy["podSelector"] == {"matchLabels": {**SELECTOR, "app.kubernetes.io/component": "relay"}}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "UDP", "port": 61441}]}], (
        "without networkPolicy.relayFrom the relay port must stay open to every source (the LAN via the load balancer)"
    )
    # control server, DERP, STUN and the relay's peers can be anywhere
    assert policy["egress"] == [{}]


def test_relay_and_health_sources_are_the_users():
    lan = [{"ipBlock": {"cidr": "192.168.1.0/24"}}]
    prometheus = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    values = {
        "networkPolicy": {"enabled": True, "relayFrom": lan, "healthFrom": prometheus},
        "health": {"port": 9100},
        "agent": {"port": 9200},
    }
    ingress = one(render(values), "NetworkPolicy", FULLNAME)["spec"]["ingress"]
    assert ingress == [
        {"ports": [{"protocol": "UDP", "port": 40000}], "from": lan},
        {"ports": [{"protocol": "TCP", "port": 9100}, {"protocol": "TCP", "port": 9200}], "from": prometheus},
    ]


@pytest.mark.parametrize("component", ["hook", "test"])
@pytest.mark.parametrize("cidrs", [[], ["172.18.0.2/32", "fc00::2/128"]], ids=["any address", "named API server"])
def test_hook_and_test_pods_reach_only_dns_and_the_api_server(component, cidrs):
    manifests = render({"networkPolicy": {"enabled": True, "apiServerCIDRs": cidrs}})
    policy = one(manifests, "NetworkPolicy", f"{FULLNAME}-{component}")["spec"]
    assert policy["podSelector"] == {"matchLabels": {**SELECTOR, "app.kubernetes.io/component": component}}
    assert policy["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in policy, "no ingress at all"
    dns, api = policy["egress"]
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    assert api["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    assert api.get("to", []) == [{"ipBlock": {"cidr": c}} for c in cidrs]
    # the policy selects the pods it is written for
    pods = [
        m
        for m in manifests
        if m["kind"] in ("Job", "Pod") and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert pods, f"no {component} pod rendered"
    for pod in pods:
        labels = pod["spec"]["template"]["metadata"]["labels"] if pod["kind"] == "Job" else pod["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items(), pod["metadata"]["name"]


@pytest.mark.parametrize(
    "bad",
    [
        {"relayFrom": [{}]},
        {"apiServerCIDRs": ["10.0.0.1"]},
        {"apiServerPorts": []},
        {"relayFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "ports": []}]},
    ],
)
def test_the_schema_refuses_malformed_policy_values(bad):
    with pytest.raises(RenderError, match="networkPolicy"):
        render({"networkPolicy": {"enabled": True, **bad}})
