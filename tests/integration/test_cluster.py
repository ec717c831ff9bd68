"""The test cluster itself: Ready dual-stack nodes (a control plane that runs workloads, and workers) whose pods reach
each other across nodes in both families, healthy system pods, and dual-stack LoadBalancer Services (MetalLB, deployed
by scripts/images/deploy)."""

from __future__ import annotations

import ipaddress

import pytest

from support.cluster import control_plane_node, worker_node
from support.pods import LISTENER, prober, toolbox_pod, wait_answers
from support.wait import wait_for

pytestmark = pytest.mark.integration

# images that cannot be pulled (the offline node image has no registry access)
PULL_ERRORS = {"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"}


def families(addresses) -> set[int]:
    return {ipaddress.ip_address(a).version for a in addresses}


def test_nodes_ready(core):
    nodes = core.list_node().items
    assert nodes, "the cluster has no nodes"
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions}.get("Ready")
        assert ready == "True", f"node {node.metadata.name} is not Ready: {node.status.conditions}"


def test_nodes_are_dual_stack(core):
    for node in core.list_node().items:
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        assert families(internal) == {4, 6}, f"{node.metadata.name} InternalIPs: {internal}"
        cidrs = node.spec.pod_cidrs or []
        assert {ipaddress.ip_network(c).version for c in cidrs} == {4, 6}, f"{node.metadata.name} podCIDRs: {cidrs}"


def test_the_control_plane_runs_workloads_beside_a_worker(core):
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert {control_plane_node(), worker_node()} <= set(nodes), f"the cluster's nodes: {sorted(nodes)}"
    taints = [t.key for t in nodes[control_plane_node()].spec.taints or []]
    assert "node-role.kubernetes.io/control-plane" not in taints, (
        "the control plane must take workloads (a drain or a lost worker moves the relay there)"
    )
    assert (
        "node.kubernetes.io/exclude-from-external-load-balancers" not in nodes[control_plane_node()].metadata.labels
    ), "MetalLB's speaker on the control plane must announce too"


@pytest.mark.parametrize("family", [4, 6])
def test_pods_on_different_nodes_reach_each_other(core, namespace, family):
    listener = toolbox_pod(core, namespace, "listener", LISTENER, node=worker_node())
    prober(core, namespace, "client", node=control_plane_node())
    wait_answers(core, namespace, "client", listener, family)


# namespaces of the cluster's own infrastructure (tests run in namespaces of
# their own, where a pull failure may be what a test provokes)
INFRA_NAMESPACES = ("kube-system", "metallb-system", "local-path-storage", "default")


def test_system_pods_healthy(core):
    stuck = []
    pods = [p for ns in INFRA_NAMESPACES for p in core.list_namespaced_pod(ns).items]
    for pod in pods:
        for st in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or []):
            waiting = st.state.waiting if st.state else None
            if waiting and waiting.reason in PULL_ERRORS:
                stuck.append(f"{pod.metadata.namespace}/{pod.metadata.name}: {st.image} {waiting.reason}")
    assert not stuck, "pods cannot get their images:\n" + "\n".join(stuck)

    dns = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items
    assert dns, "no CoreDNS pods"
    for pod in dns:
        ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready")
        assert ready == "True", f"CoreDNS pod {pod.metadata.name} is not Ready"


def test_dual_stack_loadbalancer_gets_both_families(core, namespace):
    from kubernetes import client

    svc = client.V1Service(
        metadata=client.V1ObjectMeta(name="dual-lb"),
        spec=client.V1ServiceSpec(
            type="LoadBalancer",
            ip_family_policy="RequireDualStack",
            ip_families=["IPv4", "IPv6"],
            selector={"app": "nothing"},
            ports=[client.V1ServicePort(name="udp", protocol="UDP", port=40000, target_port=40000)],
        ),
    )
    created = core.create_namespaced_service(namespace, svc)
    assert families(created.spec.cluster_ips) == {4, 6}, f"clusterIPs: {created.spec.cluster_ips}"

    wait_for(
        lambda: [
            i.ip
            for i in (core.read_namespaced_service("dual-lb", namespace).status.load_balancer.ingress or [])
            if i.ip
        ],
        "the LoadBalancer Service to get an IPv4 and an IPv6 address (is MetalLB deployed? scripts/images/deploy)",
        120,
        until=lambda ingress: families(ingress) == {4, 6},
    )
