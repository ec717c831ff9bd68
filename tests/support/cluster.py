"""The test cluster (scripts/cluster): whether this run must have it, and the values that point the chart at its
images, key and control server, layered over a test variant by one rule."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support.repo import REPO, versions
from support.values import ci_values, deep_merge
from support.wait import wait_for

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


def unavailable(reason: str):
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
    return deep_merge(yaml.safe_load(TEST_CLUSTER_VALUES.read_text()), {
        "image": {"repository": relay_repo, "tag": relay_tag},
        "agent": {"image": {"repository": agent_repo, "tag": agent_tag}},
        "hook": {"timeoutSeconds": 120},
        "auth": {"authKey": os.environ["AUTHKEY"]},
        "tailscale": {"loginServer": os.environ["LOGIN_SERVER"]},
    })


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
        kept[key] = _pruned(value, remove[key]) if isinstance(value, dict) and isinstance(remove.get(key), dict) \
            else value
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
    return subprocess.run(["docker", "exec", control_plane_node(), "kubectl", "--kubeconfig",
                           "/etc/kubernetes/admin.conf", *command], capture_output=True, text=True, timeout=timeout)


def drain(node: str) -> None:
    """`kubectl drain NODE` as a node's maintenance does it: cordoned, every pod but DaemonSets' evicted through the
    eviction API (which honours PodDisruptionBudgets, retrying until they allow it). A drain that fails (a budget
    that allows no eviction) uncordons NODE before it fails, so that the tests after it can schedule there."""
    result = in_control_plane("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s")
    if result.returncode != 0:
        uncordon(node)
    assert result.returncode == 0, f"kubectl drain {node} failed:\n{result.stdout}\n{result.stderr}"


def uncordon(node: str) -> None:
    result = in_control_plane("uncordon", node)
    assert result.returncode == 0, f"kubectl uncordon {node} failed: {result.stderr}"


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
    stopped = subprocess.run(["docker", "exec", control_plane_node(), "sh", "-c",
                              "crictl stop $(crictl ps -q --name kube-apiserver)"],
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, f"could not stop the API server: {stopped.stderr}"


# How long Flux and Argo CD may take in the background on a fresh machine: two large Go builds at the lowest CPU
# priority beside the rest of the suite, which runs first (their tests are marked gitops and run last).
GITOPS_TIMEOUT = 2700


def gitops_state(path: Path) -> dict:
    """The state scripts/images/gitops writes (JSON: state running|ready|failed, pid, log, detail). A run whose
    process is gone while it says running was killed: failed."""
    state = json.loads(path.read_text())
    pid = state.get("pid") or 0
    if state.get("state") == "running" and pid:
        try:
            alive = "images/gitops" in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            alive = False
        if not alive:
            state = {**state, "state": "failed", "detail": f"its process {pid} is gone (killed?) while: {state['detail']}"}
    return state


def log_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def wait_for_gitops(timeout: float = GITOPS_TIMEOUT) -> dict:
    """Waits until scripts/images/gitops, which scripts/cluster up runs in the background, has built and deployed Flux
    and Argo CD (its state file, GITOPS_STATE); fails at once when it failed, with the end of its log."""
    path = Path(setting("GITOPS_STATE"))

    def explain() -> str:
        state = json.loads(path.read_text()) if path.exists() else {}
        return f"the end of its log ({state.get('log', '?')}):\n{log_tail(state['log'])}" if "log" in state else ""

    state = wait_for(lambda: gitops_state(path), "scripts/images/gitops to build and deploy Flux and Argo CD "
                     f"(state {path}, run in the background by scripts/cluster up)", timeout,
                     until=lambda seen: seen.get("state") != "running", interval=5,
                     tolerate=(FileNotFoundError, json.JSONDecodeError), explain=explain)
    if state.get("state") != "ready":
        pytest.fail(f"Flux and Argo CD are not deployed: scripts/images/gitops says {state.get('state')}: "
                    f"{state.get('detail')}\n{explain()}")
    return state
