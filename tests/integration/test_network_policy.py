"""The chart's NetworkPolicies (networkPolicy.enabled) on a cluster that enforces them: the test cluster's kube-router,
for IPv4 (its v2.1.0 firewall has broken IPv6 rules, so the probes use the pods' IPv4 addresses). A pod in another
namespace tries the relay's health port (/metrics) and agent port (/readyz), and a port of pods labelled as the chart
labels its hook Job's and test Pod's pods (they listen on nothing of their own, so a listener carries their labels,
read from the release's rendered hooks); the same probes with the policies off must be answered, so these tests can
fail. With the policies on, the hook and `helm test` still pass and the LAN device still relays through the load
balancer."""
from __future__ import annotations

import ipaddress
import os

import pytest
import yaml
from kubernetes import client
from kubernetes.stream import stream

from support.cluster import on_cluster
from support.tailnet import relay_side, relayed
from support.values import deep_merge
from support.wait import wait_for

pytestmark = pytest.mark.integration

VALUES = on_cluster("network-policy")
LISTENER_PORT = 8080
# curl's exit statuses: answered; and refused (7) or timed out (28), as a NetworkPolicy engine rejects (kube-router
# answers with an ICMP port-unreachable) or drops the connection's first packet. Every target listens: with the
# policies off each probe is answered, so a refusal with them on is the policy's.
ANSWERED, BLOCKED = 0, {7, 28}
# A one-line HTTP server in the toolbox image's perl (Debian's perl-base), answering every connection with "ok".
# It reads the request to its blank line first: closing a socket with unread data resets the connection.
LISTENER = ("perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => %d, Listen => 8, ReuseAddr => 1) "
            "or die $!; while ($c = $s->accept) { while (defined($l = <$c>)) { last if $l =~ /^\\r?$/ } "
            "print $c \"HTTP/1.0 200 OK\\r\\n\\r\\nok\\n\"; close $c }'" % LISTENER_PORT)


def toolbox_pod(core, namespace: str, name: str, command: str, labels: dict | None = None) -> str:
    """Runs COMMAND in a toolbox pod NAME (restricted-compliant) and waits until it is Ready; its IPv4 address."""
    core.create_namespaced_pod(namespace, client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(termination_grace_period_seconds=1, containers=[client.V1Container(
            name="main", image=os.environ["TOOLBOX_IMAGE"], command=["sh", "-c", command],
            security_context=client.V1SecurityContext(
                run_as_non_root=True, run_as_user=1000, allow_privilege_escalation=False,
                capabilities=client.V1Capabilities(drop=["ALL"]),
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")))])))
    pod = wait_for(lambda: core.read_namespaced_pod(name, namespace), f"pod {namespace}/{name} to be Ready "
                   "(seen: its status)", 120,
                   until=lambda p: any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []))
    return ipv4_of(pod)


def ipv4_of(pod: client.V1Pod) -> str:
    return next(p.ip for p in pod.status.pod_ips if ipaddress.ip_address(p.ip).version == 4)


def curl_status(core, namespace: str, pod: str, url: str) -> int:
    """curl's exit status for URL from POD (3 s to connect and answer)."""
    out = stream(core.connect_get_namespaced_pod_exec, pod, namespace, container="main",
                 command=["sh", "-c", f"curl -sS -o /dev/null --max-time 3 {url}; echo status=$?"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    return int(out.rsplit("status=", 1)[1].split()[0])


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
    return {p.name: p.container_port for c in pod.spec.containers for p in c.ports or []}


def targets(release, core) -> dict[str, str]:
    """What a neighbour tries, by name: the relay's health and agent ports (as its pod declares them), and a listener
    labelled as each of the release's hook Job pods and test Pod."""
    relay = core.read_namespaced_pod(release.pod(0), release.namespace)
    ip, ports = ipv4_of(relay), container_ports(relay)
    urls = {"relay health port (/metrics)": f"http://{ip}:{ports['http-local']}/metrics",
            "relay agent port (/readyz)": f"http://{ip}:{ports['http-agent']}/readyz"}
    for component, labels in hook_pod_labels(release).items():
        ip = toolbox_pod(core, release.namespace, f"{component}-like-listener", LISTENER, labels)
        urls[f"a pod labelled as the {component} pod"] = f"http://{ip}:{LISTENER_PORT}/"
    return urls


def reached_from(core, namespace: str, urls: dict[str, str]) -> dict[str, int]:
    prober = "neighbour"
    toolbox_pod(core, namespace, prober, "exec sleep 3600")
    return {what: curl_status(core, namespace, prober, url) for what, url in urls.items()}


def test_without_policies_a_neighbour_reaches_every_port_the_policies_close(release, core, other_namespace):
    release.install(deep_merge(VALUES, {"networkPolicy": {"enabled": False}}))
    seen = reached_from(core, other_namespace, targets(release, core))
    assert seen == dict.fromkeys(seen, ANSWERED), \
        f"with networkPolicy.enabled=false every probe must be answered (curl status 0), or the test below proves " \
        f"nothing: {seen}"


def test_with_policies_a_neighbour_reaches_no_health_agent_hook_or_test_port_and_the_lan_still_relays(
        release, core, other_namespace, tailnet):
    release.install(VALUES)  # the post-install hook passed: it reached DNS and the API server through its policy
    release.test()  # so did the test Pod
    seen = reached_from(core, other_namespace, targets(release, core))
    assert set(seen.values()) <= BLOCKED, \
        f"with networkPolicy.enabled a pod in another namespace must not reach these (curl status 7 or 28: refused " \
        f"or dropped): {seen}"
    port = container_ports(core.read_namespaced_pod(release.pod(0), release.namespace))["relay"]
    endpoints = release.service_endpoints(0, port)
    tailnet.ping_until(relayed(endpoints), 180, f"the relay at {sorted(endpoints)}, its NetworkPolicy on",
                       relay_side(release))


def test_health_from_opens_the_health_and_agent_ports_to_the_namespaces_it_names_only(release, core, other_namespace):
    release.install(deep_merge(VALUES, {"networkPolicy": {"healthFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": other_namespace}}}]}}))
    seen = reached_from(core, other_namespace, targets(release, core))
    opened = {what: status for what, status in seen.items() if what.startswith("relay ")}
    closed = {what: status for what, status in seen.items() if what not in opened}
    assert opened == dict.fromkeys(opened, ANSWERED), \
        f"networkPolicy.healthFrom names this namespace: its pods must reach the health and agent ports: {seen}"
    assert set(closed.values()) <= BLOCKED, f"healthFrom must not open the hook's or test's pods: {seen}"
