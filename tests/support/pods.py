"""The tests' own pods on the cluster: toolbox pods (TOOLBOX_IMAGE: Debian minbase with curl and kubectl) that listen
or probe, and what they see."""

from __future__ import annotations

import ipaddress
import os

from kubernetes import client
from kubernetes.stream import stream

from support.cluster import pod_network_routes
from support.kube import name_of, node_name, pod_status
from support.wait import wait_for

LISTENER_PORT = 8080
# A one-line HTTP server in the toolbox image's perl (Debian's perl-base), answering every connection with "ok". It
# reads the request to its blank line first: closing a socket with unread data resets the connection.
# It listens on both families ("::", not IPv6-only).
LISTENER = (
    "perl -MIO::Socket::IP -e '$s = IO::Socket::IP->new("  # noqa: UP031 (perl's braces would need escaping in .format)
    'LocalHost => "::", LocalPort => %d, Listen => 8, ReuseAddr => 1, V6Only => 0) or die $!; '
    "while ($c = $s->accept) { while (defined($l = <$c>)) { last if $l =~ /^\\r?$/ } "
    'print $c "HTTP/1.0 200 OK\\r\\n\\r\\nok\\n"; close $c }\'' % LISTENER_PORT
)
# curl's exit statuses: answered; and refused (7) or timed out (28), as a NetworkPolicy engine rejects (kube-router
# answers with an ICMP port-unreachable) or drops the connection's first packet
ANSWERED, BLOCKED = 0, {7, 28}


def toolbox_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    command: str,
    labels: dict | None = None,
    node: str | None = None,
) -> client.V1Pod:
    """Runs COMMAND in a toolbox pod NAME (restricted-compliant; on NODE if given) and waits until it is Ready."""
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
            spec=client.V1PodSpec(
                termination_grace_period_seconds=1,
                node_name=node,
                containers=[
                    client.V1Container(
                        name="main",
                        image=os.environ["TOOLBOX_IMAGE"],
                        command=["sh", "-c", command],
                        security_context=client.V1SecurityContext(
                            run_as_non_root=True,
                            run_as_user=1000,
                            allow_privilege_escalation=False,
                            capabilities=client.V1Capabilities(drop=["ALL"]),
                            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
                        ),
                    )
                ],
            ),
        ),
    )
    return wait_for(
        lambda: core.read_namespaced_pod(name, namespace),
        f"pod {namespace}/{name} to be Ready (seen: its status)",
        120,
        until=lambda p: any(c.type == "Ready" and c.status == "True" for c in pod_status(p).conditions or []),
    )


def prober(core: client.CoreV1Api, namespace: str, name: str, node: str | None = None) -> client.V1Pod:
    """A toolbox pod NAME that only waits (on NODE if given), for curl_status to probe from."""
    return toolbox_pod(core, namespace, name, "exec sleep 3600", node=node)


def pod_ip(pod: client.V1Pod, family: int = 4) -> str:
    """POD's address of FAMILY (4 or 6)."""
    return next(p.ip for p in pod_status(pod).pod_ips or [] if ipaddress.ip_address(p.ip).version == family)


def url(address: str, port: int, path: str = "/") -> str:
    return (
        f"http://[{address}]:{port}{path}"
        if ipaddress.ip_address(address).version == 6
        else f"http://{address}:{port}{path}"
    )


def wait_answers(
    core: client.CoreV1Api, namespace: str, pod: str, listener: client.V1Pod, family: int, timeout: float = 30
) -> None:
    """Waits until POD reaches the LISTENER pod over IPv FAMILY; fails with curl's last exit status and every node's
    routes, neighbours and forwarding rules. A few tries, not one: once (CI, 2026-12-03) the first IPv6 connection
    between two new pods timed out and no cause was found again; a route or rule that stays wrong fails it, and the
    message shows which."""
    target = url(pod_ip(listener, family), LISTENER_PORT)
    wait_for(
        lambda: curl_status(core, namespace, pod, target),
        f"pod {namespace}/{pod} to reach pod {name_of(listener)} on {node_name(listener)} at {target} "
        f"over IPv{family} (seen: curl's exit status; if it never does, the CNI does not route the pod network "
        "between the nodes)",
        timeout,
        until=lambda status: status == ANSWERED,
        explain=lambda: pod_network_routes(family),
    )


def curl_status(core: client.CoreV1Api, namespace: str, pod: str, target: str) -> int:
    """curl's exit status for the URL TARGET from POD (3 s to connect and answer)."""
    out = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        namespace,
        container="main",
        command=["sh", "-c", f"curl -sS -g -o /dev/null --max-time 3 '{target}'; echo status=$?"],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
    )
    return int(out.rsplit("status=", 1)[1].split()[0])
