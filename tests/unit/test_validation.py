"""Cross-field rules: bad combinations fail before anything is installed, naming the value to fix."""

import pytest
import yaml

from support.render import RenderError, render
from support.repo import CHART

TAGGED = {"tailscale": {"tags": ["tag:relay"]}}

CASES = {
    "no agent image (a source checkout)": (
        {"agent": {"image": {"repository": ""}}},
        "agent.image.repository: this chart is a source checkout, which names no agent image",
    ),
    "no credentials": (
        {"auth": {"authKey": ""}},
        "auth: set one of auth.authKey, auth.existingSecret or auth.oauth",
    ),
    "key and existing secret": (
        {"auth": {"authKey": "tskey-auth-k1", "existingSecret": "mine"}},
        "auth: set only one of auth.authKey, auth.existingSecret or auth.oauth; "
        "found auth.authKey, auth.existingSecret",
    ),
    "key and oauth": (
        {"auth": {"authKey": "tskey-auth-k1", "oauth": {"clientId": "id", "clientSecret": "s"}}, **TAGGED},
        "found auth.authKey, auth.oauth",
    ),
    "oauth without secret": (
        {"auth": {"authKey": "", "oauth": {"clientId": "id"}}, **TAGGED},
        "auth.oauth: auth.oauth.clientId and auth.oauth.clientSecret must both be set",
    ),
    "oauth both ways": (
        {"auth": {"authKey": "", "oauth": {"clientId": "id", "clientSecret": "s", "existingSecret": "o"}}, **TAGGED},
        "auth.oauth: set either auth.oauth.existingSecret or auth.oauth.clientId/clientSecret, not both",
    ),
    "oauth without tags": (
        {"auth": {"authKey": "", "oauth": {"clientId": "id", "clientSecret": "s"}}},
        "tailscale.tags: OAuth clients can only create tagged nodes",
    ),
    "node port without endpoints": (
        {"service": {"type": "NodePort"}},
        "relay.staticEndpoints: service.type NodePort has no load balancer address to discover",
    ),
    "static endpoints for several replicas": (
        {"replicaCount": 2, "relay": {"staticEndpoints": ["192.0.2.1:40000"]}},
        "relay.staticEndpoints: one list cannot describe several relays",
    ),
    "one node port for several replicas": (
        {"replicaCount": 2, "service": {"nodePort": 30001}},
        "service.nodePort: each replica has its own Service",
    ),
    "load balancer class on a node port": (
        {
            "service": {"type": "NodePort", "nodePort": 30001, "loadBalancerClass": "x"},
            "relay": {"staticEndpoints": ["192.0.2.1:30001"]},
        },
        "service.loadBalancerClass: only applies to service.type LoadBalancer",
    ),
    "source ranges on a node port": (
        {
            "service": {"type": "NodePort", "nodePort": 30001, "loadBalancerSourceRanges": ["10.0.0.0/8"]},
            "relay": {"staticEndpoints": ["192.0.2.1:30001"]},
        },
        "service.loadBalancerSourceRanges: only applies to service.type LoadBalancer",
    ),
    "single stack with two families": (
        {"service": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}},
        "service.ipFamilies: service.ipFamilyPolicy SingleStack takes one family",
    ),
    "require dual stack with one family": (
        {"service": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]}},
        "service.ipFamilies: service.ipFamilyPolicy RequireDualStack needs both families",
    ),
    "two families without a dual-stack policy": (
        {"service": {"ipFamilies": ["IPv4", "IPv6"]}},
        "service.ipFamilyPolicy: two service.ipFamilies need ipFamilyPolicy PreferDualStack or RequireDualStack",
    ),
    "no relay at all": (
        # Zero replicas would render Roles without resourceNames, i.e. rights on every Secret and pod.
        {"replicaCount": 0},
        "replicaCount",
    ),
    "an existing service account without a name": (
        {"serviceAccount": {"create": False}},
        "serviceAccount.name: with serviceAccount.create false, name the existing ServiceAccount the relay runs as",
    ),
    "a node port that Kubernetes picks": (
        {"service": {"type": "NodePort"}, "relay": {"staticEndpoints": ["192.0.2.1:30441"]}},
        "service.nodePort: with service.type NodePort, fix the node port",
    ),
    "a static endpoint on another port than the node port": (
        {
            "service": {"type": "NodePort", "nodePort": 30441},
            "relay": {"staticEndpoints": ["192.0.2.1:30441", "[2001:db8::1]:40000"]},
        },
        "relay.staticEndpoints: [2001:db8::1]:40000 does not use service.nodePort 30441",
    ),
    "a value removed in 0.2.0": (
        {"health": {"enabled": True}},
        "health.enabled: removed in chart 0.2.0; the relay's readiness probe is always on",
    ),
    "the hook image of 0.3.0": (
        {"hook": {"image": {"repository": "docker.io/alpine/k8s", "tag": "1.34.2"}}},
        "hook.image: renamed agent.image in chart 0.4.0",
    ),
    "the relay-settings sidecar of 0.3.0": (
        {"settingsSidecar": {"intervalSeconds": 10}},
        "settingsSidecar: replaced by agent in chart 0.4.0; settingsSidecar.resources is agent.resources",
    ),
    "the namespace's default service account": (
        # every pod of the namespace that names no account runs as "default": the relay's Role (its state Secrets,
        # which hold the node keys) must not be bound to it
        {"serviceAccount": {"create": False, "name": "default"}},
        'serviceAccount.name: "default" is the account every pod in the namespace runs as',
    ),
    "the default service account, to be created": (
        {"serviceAccount": {"name": "default"}},
        'serviceAccount.name: "default" is the account every pod in the namespace runs as',
    ),
    "a prometheus rule without metrics": (
        {"metrics": {"prometheusRule": {"enabled": True}}},
        "metrics.enabled: metrics.prometheusRule.enabled needs metrics.enabled true",
    ),
    "a prometheus rule without the CRD": (
        {"metrics": {"enabled": True, "prometheusRule": {"enabled": True}}},
        "metrics.prometheusRule.enabled: the cluster has no monitoring.coreos.com/v1 PrometheusRule",
    ),
    "a dashboard without metrics": (
        {"metrics": {"dashboard": {"enabled": True}}},
        "metrics.enabled: metrics.dashboard.enabled needs metrics.enabled true",
    ),
    "service monitor without metrics": (
        {"metrics": {"serviceMonitor": {"enabled": True}}},
        "metrics.enabled: metrics.serviceMonitor.enabled needs metrics.enabled true",
    ),
    "service monitor without the CRD": (
        {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}},
        "metrics.serviceMonitor.enabled: the cluster has no monitoring.coreos.com/v1 ServiceMonitor",
    ),
}


@pytest.mark.parametrize("values, message", CASES.values(), ids=CASES.keys())
def test_bad_combination_fails_with_a_message_naming_the_value(values, message):
    with pytest.raises(RenderError) as failure:
        render(values)
    assert message in str(failure.value)


def test_service_monitor_renders_when_the_cluster_has_the_crd():
    values = {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    manifests = render(values, args=("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))
    monitor = next(m for m in manifests if m["kind"] == "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "http-local", "path": "/metrics", "interval": "30s"}]
    assert not [m for m in render({"metrics": {"enabled": True}}) if m["kind"] == "ServiceMonitor"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"auth": {"authKey": "", "existingSecret": "ts-auth"}},
        {"auth": {"authKey": "", "oauth": {"existingSecret": "oauth"}}, **TAGGED},
        {"service": {"type": "NodePort", "nodePort": 30001}, "relay": {"staticEndpoints": ["192.0.2.1:30001"]}},
        {"service": {"ipFamilyPolicy": "RequireDualStack"}},
        {"service": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}},
    ],
)
def test_good_combinations_render(values):
    assert render(values)


def test_an_install_from_a_checkout_without_an_agent_image_says_how_to_build_push_and_name_one():
    # what `helm install relay ./chart` with a user's ordinary values meets: at render, not after Helm's timeout
    with pytest.raises(RenderError) as refused:
        render({"agent": {"image": {"repository": ""}}})
    message, version = str(refused.value), yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    for step in (
        "scripts/agent-image --out relay-agent-oci",
        f"oras cp --from-oci-layout relay-agent-oci:{version}",
        "--set agent.image.repository=REGISTRY/relay-agent",
        "Install a released chart",
    ):
        assert step in message, f"the refusal should say {step!r}: {message}"
