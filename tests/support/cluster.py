"""The test cluster (scripts/cluster): whether this run must have it, and the values that point the chart at its
images, key and control server, layered over a test variant by one rule."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from support.background import BACKGROUND_TIMEOUT, wait_for_background
from support.repo import REPO, versions
from support.values import ci_values, deep_merge

ENV_HINT = 'run scripts/cluster up, then eval "$(scripts/cluster env)"'
REQUIRED_ENV = ("LOGIN_SERVER", "AUTHKEY", "RELAY_IMAGE", "AGENT_IMAGE", "TOOLBOX_IMAGE")
# what every relay on the test cluster gets (DERP over HTTP, no log upload), also read by scripts/demo and scripts/bench
TEST_CLUSTER_VALUES = REPO / "scripts" / "images" / "relay-values.yaml"
# Values of a variant that the test cluster supplies its own way: the credential (the variants' example key or
# existing Secret; the cluster's key instead) and the tags (the cluster's key carries tag:relay, and Headscale refuses
# a pre-auth key registration that asks for tags: the README's Headscale section). None deletes a value, in helm's
# merge as in ours.
ELSEWHERE = {"auth": {"authKey": None, "existingSecret": None}, "tailscale": {"tags": None}}
# The write-up's fixed load balancer addresses: the test cluster's MetalLB serves them (pool "seed", given only on
# request: scripts/images/deploy), so `ct install` installs the seed as it is, but nothing routes them to the LAN
# device. A test that relays leaves them out and takes addresses from the routed pool.
UNROUTED = {"service": {"annotations": {"metallb.io/loadBalancerIPs": None}}}


def cluster_required() -> str | None:
    """Why this run must have the cluster, or None: REQUIRE_CLUSTER=1 (scripts/test sets it after it brought the
    cluster up), or CI=true (what every CI system sets: a CI run that skips the integration tests tested nothing)."""
    if os.environ.get("REQUIRE_CLUSTER") == "1":
        return "REQUIRE_CLUSTER=1"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        return f"CI={os.environ['CI']}"
    return None


def unavailable(reason: str) -> NoReturn:
    """The cluster or its settings are missing: a skip when someone runs the suite without a cluster, a failure when
    the run requires one (cluster_required)."""
    required = cluster_required()
    if required:
        pytest.fail(f"{reason} although this run requires the cluster ({required}): {ENV_HINT}")
    pytest.skip(f"{reason}: {ENV_HINT}")


def setting(name: str) -> str:
    """Environment variable NAME that `scripts/cluster env` exports; unavailable() without it."""
    value = os.environ.get(name)
    if not value:
        unavailable(f"{name} unset")
    return value


def cluster_values() -> dict:
    """Values that point the chart at this cluster's images and control server, over the values every test relay
    gets (TEST_CLUSTER_VALUES: DERP over HTTP, no log upload)."""
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        unavailable(f"{', '.join(missing)} unset")
    relay_repo, relay_tag = os.environ["RELAY_IMAGE"].rsplit(":", 1)
    agent_repo, agent_tag = os.environ["AGENT_IMAGE"].rsplit(":", 1)
    return deep_merge(
        yaml.safe_load(TEST_CLUSTER_VALUES.read_text()),
        {
            "image": {"repository": relay_repo, "tag": relay_tag},
            "agent": {"image": {"repository": agent_repo, "tag": agent_tag}},
            "hook": {"timeoutSeconds": 120},
            "auth": {"authKey": os.environ["AUTHKEY"]},
            "tailscale": {"loginServer": os.environ["LOGIN_SERVER"]},
        },
    )


def overlay() -> dict:
    """What goes over any test variant on this cluster (ct install's extra values file): the cluster's values (its
    key among them), with the rest of ELSEWHERE's values deleted (helm deletes a None where the chart has a default;
    a fixed address has none, hence the seed pool)."""
    return deep_merge(ELSEWHERE, cluster_values())


def _pruned(values: dict, remove: dict) -> dict:
    kept = {}
    for key, value in values.items():
        if key in remove and remove[key] is None:
            continue
        kept[key] = (
            _pruned(value, remove[key]) if isinstance(value, dict) and isinstance(remove.get(key), dict) else value
        )
    return kept


def on_cluster(name: str) -> dict:
    """Test variant NAME (chart/ci/NAME-values.yaml) without ELSEWHERE's and UNROUTED's values: what a test installs
    (over cluster_values, as Release does) to run that setup on this cluster, reached from the LAN device."""
    return _pruned(_pruned(ci_values(name), ELSEWHERE), UNROUTED)


def _cluster_name() -> str:
    return os.environ.get("KIND_CLUSTER_NAME", versions()["CLUSTER_NAME"])


def control_plane_node() -> str:
    """The kind control-plane node's container name (KIND_CLUSTER_NAME, or the pinned CLUSTER_NAME); also its
    Kubernetes node name."""
    return f"{_cluster_name()}-control-plane"


def worker_node() -> str:
    """The first kind worker's container and node name (scripts/cluster makes CLUSTER_WORKERS of them): the node the
    availability events drain and stop, so that the control plane (and the API server) stays up."""
    return f"{_cluster_name()}-worker"


def in_control_plane(*command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """kubectl COMMAND as the cluster's admin, run on the control-plane node (its kubectl: this host need not have
    one)."""
    return subprocess.run(
        ["docker", "exec", control_plane_node(), "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pod_network_routes(family: int) -> str:
    """The routes of FAMILY (4 or 6) but link-local ones on the control plane and the first worker (what kube-router
    injects for the other node's pod CIDRs, and the node's own bridge), their neighbour entries on eth0 and their
    FORWARD rules: for a person reading why pods on the two nodes do not reach each other."""
    lines = []
    for node in (control_plane_node(), worker_node()):
        shown = subprocess.run(
            [
                "docker",
                "exec",
                node,
                "sh",
                "-c",
                f"ip -{family} route show | grep -v '^fe80'; echo '-- neighbours on eth0:'; "
                f"ip -{family} neigh show dev eth0; echo '-- forwarding rules:'; "
                f"{'ip6tables' if family == 6 else 'iptables'} -S FORWARD",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines += [f"{node}:", (shown.stdout + shown.stderr).rstrip()]
    return "\n".join(lines)


def cordon(node: str) -> None:
    """`kubectl cordon NODE`, with this test session's marks on the node (support.namespaces.session_labels, as
    annotations), so that the next session uncordons it when this one is killed before it could."""
    from support.namespaces import session_labels

    marked = in_control_plane(
        "annotate", "--overwrite", "node", node, *(f"{key}={value}" for key, value in session_labels().items())
    )
    assert marked.returncode == 0, f"could not annotate node {node}: {marked.stderr}"
    result = in_control_plane("cordon", node)
    assert result.returncode == 0, f"kubectl cordon {node} failed: {result.stderr}"


def drain(node: str) -> None:
    """`kubectl drain NODE` as a node's maintenance does it: cordoned (cordon), every pod but DaemonSets' evicted
    through the eviction API (which honours PodDisruptionBudgets, retrying until they allow it). A drain that fails
    (a budget that allows no eviction) uncordons NODE before it fails, so that the tests after it can schedule
    there."""
    cordon(node)
    result = in_control_plane("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s")
    if result.returncode != 0:
        uncordon(node)
    assert result.returncode == 0, f"kubectl drain {node} failed:\n{result.stdout}\n{result.stderr}"


def uncordon(node: str) -> None:
    """`kubectl uncordon NODE`, and the cordoning session's marks (cordon) off the node."""
    from support.namespaces import HOST_LABEL, SESSION_LABEL

    result = in_control_plane("uncordon", node)
    assert result.returncode == 0, f"kubectl uncordon {node} failed: {result.stderr}"
    unmarked = in_control_plane("annotate", "node", node, f"{SESSION_LABEL}-", f"{HOST_LABEL}-")
    assert unmarked.returncode == 0, (
        f"could not remove the test session's annotations from node {node}: {unmarked.stderr}"
    )


def stop_node(node: str) -> None:
    """The node is lost: its kind container stopped (the kubelet, its pods and their network go at once)."""
    result = subprocess.run(["docker", "stop", "--time", "0", node], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker stop {node} failed: {result.stderr}"


def start_node(node: str) -> None:
    """The lost node comes back (its container started again: systemd, containerd and the kubelet boot)."""
    result = subprocess.run(["docker", "start", node], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docker start {node} failed: {result.stderr}"


def stop_api_server() -> None:
    """Stops the API server's static pod container on the control-plane node, as a control-plane upgrade restarts it;
    the kubelet starts it again."""
    stopped = subprocess.run(
        ["docker", "exec", control_plane_node(), "sh", "-c", "crictl stop $(crictl ps -q --name kube-apiserver)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stopped.returncode == 0, f"could not stop the API server: {stopped.stderr}"


def wait_for_gitops(timeout: float = BACKGROUND_TIMEOUT) -> dict:
    """Waits until scripts/images/gitops, which scripts/cluster up runs in the background, has built and deployed Flux
    and Argo CD (its state file, GITOPS_STATE); fails at once when it failed, with the end of its log."""
    return wait_for_background(
        Path(setting("GITOPS_STATE")),
        "scripts/images/gitops",
        "build and deploy Flux and Argo CD (run in the background by scripts/cluster up)",
        timeout,
    )
