"""Coming from the write-up's hand-made relay: its manifests applied and configured as the write-up did it
(`kubectl exec … tailscale set --relay-server-port=… --relay-server-static-endpoints=…`), the LAN device relaying
through it; then
scripts/migrate-state moves its identity into the chart's state Secret and `helm install` brings it back as the same
Tailscale node (node key and tailnet addresses), on the same LoadBalancer addresses, with the LAN device relaying
through the chart's relay.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from kubernetes import client, utils

from support.cluster import cluster_values
from support.repo import REPO, TOOLS
from support.tailnet import relay_side, relayed
from support.values import ci_values, deep_merge
from support.wait import wait_for

pytestmark = pytest.mark.integration

HANDMADE = REPO / "tests" / "integration" / "handmade-relay.yaml"
# the write-up's relay port (chart/ci/seed-values.yaml; handmade-relay.yaml is the write-up's manifests)
PORT = ci_values("seed")["relay"]["port"]
OLD = "tailscale-peer-relay"  # the write-up's names: Deployment, Service, state Secret (with -state)


def kubectl() -> str:
    result = subprocess.run(
        ["bash", "-c", "source scripts/images/lib.sh && find_kubectl"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, f"no kubectl built for the tests (scripts/cluster up builds one): {result.stderr}"
    return result.stdout.strip()


def migrate_state(namespace: str, release: str, *helm_args: str) -> subprocess.CompletedProcess:
    """scripts/migrate-state from the write-up's state Secret to RELEASE's, in NAMESPACE."""
    return subprocess.run(
        [
            str(REPO / "scripts" / "migrate-state"),
            "--from",
            f"{namespace}/{OLD}-state",
            "--release",
            release,
            "--namespace",
            namespace,
            *helm_args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECTL": kubectl(), "HELM": str(TOOLS / "helm")},
    )


def apply_handmade(kube_api, namespace: str) -> None:
    text = HANDMADE.read_text()
    for name, value in {
        "NAMESPACE": namespace,
        "AUTHKEY": os.environ["AUTHKEY"],
        "IMAGE": os.environ["RELAY_IMAGE"],
        "LOGIN_SERVER": os.environ["LOGIN_SERVER"],
    }.items():
        text = text.replace(f"@{name}@", value)
    utils.create_from_yaml(kube_api, yaml_objects=list(yaml.safe_load_all(text)), namespace=namespace)


def old_pod(core, namespace: str):
    pods = [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=f"app={OLD}").items
        if not p.metadata.deletion_timestamp
    ]
    return pods[0] if pods else None


def test_the_write_ups_relay_moves_to_the_chart_as_the_same_node(kube_api, core, namespace, release, tailnet, tmp_path):
    # --- the write-up's relay, set up as the write-up did ------------------------------------------------------
    apply_handmade(kube_api, namespace)

    def logged_in() -> bool:
        pod = old_pod(core, namespace)
        if not pod or pod.status.phase != "Running":
            return False
        try:
            return json.loads(release.tailscale(pod.metadata.name, "status", "--json"))["BackendState"] == "Running"
        except Exception:  # tailscaled not up yet
            return False

    wait_for(logged_in, "the write-up's relay to log in", 180, interval=3, explain=release.describe)
    wait_for(
        lambda: release.service_addresses(OLD),
        "two LoadBalancer addresses on its Service",
        120,
        interval=3,
        until=lambda addresses: len(addresses) == 2,
    )
    addresses = release.service_addresses(OLD)
    endpoints = release.service_endpoints(0, PORT, service=OLD)
    pod = old_pod(core, namespace).metadata.name
    release.tailscale(
        pod, "set", f"--relay-server-port={PORT}", f"--relay-server-static-endpoints={','.join(sorted(endpoints))}"
    )
    tailnet.ping_until(relayed(endpoints), 180, f"the write-up's relay at {sorted(endpoints)}", release.describe)
    identity = release.node_identity(pod)

    # --- the migration, as the README says -----------------------------------------------------------------------
    apps = client.AppsV1Api(kube_api)
    apps.patch_namespaced_deployment_scale(OLD, namespace, {"spec": {"replicas": 0}})
    wait_for(
        lambda: [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=f"app={OLD}").items],
        "the old relay pod to be gone (seen: its pods)",
        120,
        interval=3,
        until=lambda pods: not pods,
    )
    # the old Service gives its addresses back, for the chart's Service to take
    core.delete_namespaced_service(OLD, namespace)
    values = {
        "relay": {"port": PORT},
        "tailscale": {"hostname": "k8s-peer-relay"},
        "service": {
            "ipFamilyPolicy": "RequireDualStack",
            "annotations": {"metallb.io/loadBalancerIPs": ",".join(addresses)},
        },
    }
    # the script renders the chart with the values the install will use
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(deep_merge(cluster_values(), values)))
    migrate = migrate_state(namespace, release.name, "-f", str(values_file))
    assert migrate.returncode == 0, f"scripts/migrate-state failed:\n{migrate.stderr}"
    release.install(values)

    new_pod = release.pod(0)
    assert release.node_identity(new_pod) == identity, (
        "the chart's relay should be the write-up's node: the same node key and tailnet addresses"
    )
    assert set(release.service_addresses(new_pod)) == set(addresses), (
        "the chart's Service should have taken the old Service's addresses"
    )
    assert release.relay_settings(new_pod) == (str(PORT), endpoints)
    tailnet.ping_until(relayed(endpoints), 180, "the chart's relay, the same node", relay_side(release))
    release.test()


def test_migrate_state_refuses_while_the_old_relay_runs(kube_api, core, namespace, release):
    apply_handmade(kube_api, namespace)
    wait_for(lambda: old_pod(core, namespace), "the write-up's relay pod", 120, interval=3, explain=release.describe)
    result = migrate_state(namespace, release.name, "--set", "auth.authKey=x")
    assert result.returncode != 0 and "still use Secret" in result.stderr, (
        f"two relays with one node key must be refused:\n{result.stderr}"
    )
    # it refused before it wrote anything
    assert not [
        s for s in core.list_namespaced_secret(namespace).items if release.names.is_state_secret(s.metadata.name)
    ]
