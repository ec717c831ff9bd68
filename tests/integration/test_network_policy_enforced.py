"""The chart's NetworkPolicies (networkPolicy.enabled) on a cluster that enforces them: the test cluster's kube-router,
for IPv4 (its v2.1.0 firewall has broken IPv6 rules, so the probes use the pods' IPv4 addresses). A pod in another
namespace tries the relay's health port (/metrics) and agent port (/readyz), and a port of pods labelled as the chart
labels its hook Job's and test Pod's pods (they listen on nothing of their own, so a listener carries their labels,
read from the release's rendered hooks); the same probes with the policies off must be answered, so these tests can
fail. With the policies on, the hook and `helm test` still pass and the LAN device still relays through the load
balancer."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client

from support.cluster import on_cluster
from support.pods import ANSWERED, BLOCKED, LISTENER, LISTENER_PORT, curl_status, pod_ip, prober, toolbox_pod, url
from support.tailnet import relay_side, relayed
from support.values import deep_merge

pytestmark = pytest.mark.integration

VALUES = on_cluster("network-policy")


def hook_pod_labels(release) -> dict[str, dict]:
    """The labels the release gives its hook Job's pods and its test Pod, from its rendered hooks."""
    hooks = list(yaml.safe_load_all(release.helm("get", "hooks", release.name).stdout))
    labels = {}
    for hook in filter(None, hooks):
        if hook["kind"] == "Job":
            labels["hook"] = hook["spec"]["template"]["metadata"]["labels"]
        elif hook["kind"] == "Pod":
            labels["test"] = hook["metadata"]["labels"]
    assert set(labels) == {"hook", "test"}, f"the release's hooks should hold a hook Job and a test Pod: {hooks}"
    return labels


def container_ports(pod: client.V1Pod) -> dict[str, int]:
    # the API server sets it; the client types it Optional (type: ignore below)
    return {p.name: p.container_port for c in pod.spec.containers for p in c.ports or []}  # type: ignore[misc,union-attr]


def targets(release, core) -> dict[str, str]:
    """What a neighbour tries, by name: the relay's health and agent ports (as its pod declares them), and a listener
    labelled as each of the release's hook Job pods and test Pod."""
    relay = core.read_namespaced_pod(release.pod(0), release.namespace)
    ip, ports = pod_ip(relay), container_ports(relay)
    urls = {
        "relay health port (/metrics)": url(ip, ports["http-local"], "/metrics"),
        "relay agent port (/readyz)": url(ip, ports["http-agent"], "/readyz"),
    }
    for component, labels in hook_pod_labels(release).items():
        listener = toolbox_pod(core, release.namespace, f"{component}-like-listener", LISTENER, labels)
        urls[f"a pod labelled as the {component} pod"] = url(pod_ip(listener), LISTENER_PORT)
    return urls


def reached_from(core, namespace: str, urls: dict[str, str]) -> dict[str, int]:
    # the API server sets it; the client types it Optional (type: ignore below)
    neighbour = prober(core, namespace, "neighbour").metadata.name  # type: ignore[union-attr]
    # the API server sets it; the client types it Optional (type: ignore below)
    return {what: curl_status(core, namespace, neighbour, target) for what, target in urls.items()}  # type: ignore[arg-type]


def test_without_policies_a_neighbour_reaches_every_port_the_policies_close(release, core, other_namespace):
    release.install(deep_merge(VALUES, {"networkPolicy": {"enabled": False}}))
    seen = reached_from(core, other_namespace, targets(release, core))
    assert seen == dict.fromkeys(seen, ANSWERED), (
        f"with networkPolicy.enabled=false every probe must be answered (curl status 0), or the test below proves "
        f"nothing: {seen}"
    )


def test_with_policies_a_neighbour_reaches_no_health_agent_hook_or_test_port_and_the_lan_still_relays(
    release, core, other_namespace, tailnet
):
    release.install(VALUES)  # the post-install hook passed: it reached DNS and the API server through its policy
    release.test()  # so did the test Pod
    seen = reached_from(core, other_namespace, targets(release, core))
    assert set(seen.values()) <= BLOCKED, (
        f"with networkPolicy.enabled a pod in another namespace must not reach these (curl status 7 or 28: refused "
        f"or dropped): {seen}"
    )
    port = container_ports(core.read_namespaced_pod(release.pod(0), release.namespace))["relay"]
    endpoints = release.service_endpoints(0, port)
    tailnet.ping_until(
        relayed(endpoints), 180, f"the relay at {sorted(endpoints)}, its NetworkPolicy on", relay_side(release)
    )


def test_health_from_opens_the_health_and_agent_ports_to_the_namespaces_it_names_only(release, core, other_namespace):
    release.install(
        deep_merge(
            VALUES,
            {
                "networkPolicy": {
                    "healthFrom": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other_namespace}}}
                    ]
                }
            },
        )
    )
    seen = reached_from(core, other_namespace, targets(release, core))
    opened = {what: status for what, status in seen.items() if what.startswith("relay ")}
    closed = {what: status for what, status in seen.items() if what not in opened}
    assert opened == dict.fromkeys(opened, ANSWERED), (
        f"networkPolicy.healthFrom names this namespace: its pods must reach the health and agent ports: {seen}"
    )
    assert set(closed.values()) <= BLOCKED, f"healthFrom must not open the hook's or test's pods: {seen}"
