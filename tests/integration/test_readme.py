"""The README's own commands, run as written on the test cluster: the install (step 3) with its values file, the
checks, the troubleshooting commands and the uninstall, so that a user who follows only the README gets a relay that
relays, and the README cannot drift from what works.

The only substitutions are the ones a user makes for their own setup: the test's namespace for `tailscale`, the
cluster's key for `tskey-auth-…`, the checkout's chart for the published one, the cluster's images, control server
and routed addresses in relay-values.yaml (the one rule every test uses, support.cluster.on_cluster), and the
tailnet in a box's workload for `<a tailnet device in the cluster>`. Commands that start with `tailscale` run on the
LAN device, the rest in a shell here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from support.cluster import cluster_values, on_cluster
from support.docs import README, blocks, commands, section
from support.repo import CHART, TOOLS
from support.tailnet import parse_pongs
from support.values import ci_values, deep_merge

pytestmark = pytest.mark.integration

WORKLOAD = "<a tailnet device in the cluster>"


class ReadmeShell:
    """Runs the README's commands with the substitutions above; each failure names the command and its output."""

    def __init__(self, namespace: str, workdir: Path, lan_client: str, workload: str) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.lan_client = lan_client
        self.workload = workload
        self.env = {**os.environ, "PATH": f"{TOOLS}:{os.environ['PATH']}"}

    def substituted(self, command: str) -> str:
        command = re.sub(r"oci://\S+ --version \S+", str(CHART), command)
        command = re.sub(r"(-n|--namespace) tailscale\b", rf"\1 {self.namespace}", command)
        command = command.replace("TS_AUTHKEY=tskey-auth-…", f"TS_AUTHKEY={os.environ['AUTHKEY']}")
        return command.replace(WORKLOAD, self.workload)

    def run(self, command: str, timeout: int = 600) -> str:
        command = self.substituted(command)
        assert "…" not in command and "<" not in command, f"the README's command has a placeholder left: {command}"
        if command.startswith("tailscale "):
            argv = ["docker", "exec", self.lan_client, *shlex.split(command)]
        else:
            argv = ["bash", "-c", command]
        result = subprocess.run(argv, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (
            f"the README's command failed ({result.returncode}): {command}\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout


def readme_section_commands(title: str) -> list[list[str]]:
    """The commands of each shell block under README heading TITLE."""
    return [commands(b) for b in blocks(section(README.read_text(), title), "sh")]


def labelled(release, selector: str) -> list[str]:
    """Every object of the kinds the chart makes in the release's namespace that SELECTOR matches, as Kind/name (pods
    being deleted left out)."""
    core, apps, batch = release.core, release.apps, release.batch
    rbac = client.RbacAuthorizationV1Api(core.api_client)
    ns = release.namespace
    found = {
        "Secret": core.list_namespaced_secret(ns, label_selector=selector).items,
        "Service": core.list_namespaced_service(ns, label_selector=selector).items,
        "ConfigMap": core.list_namespaced_config_map(ns, label_selector=selector).items,
        "ServiceAccount": core.list_namespaced_service_account(ns, label_selector=selector).items,
        "Pod": [
            p for p in core.list_namespaced_pod(ns, label_selector=selector).items if not p.metadata.deletion_timestamp
        ],
        "StatefulSet": apps.list_namespaced_stateful_set(ns, label_selector=selector).items,
        "Job": batch.list_namespaced_job(ns, label_selector=selector).items,
        "Role": rbac.list_namespaced_role(ns, label_selector=selector).items,
        "RoleBinding": rbac.list_namespaced_role_binding(ns, label_selector=selector).items,
    }
    return sorted(f"{kind}/{item.metadata.name}" for kind, items in found.items() for item in items)


def test_the_readmes_install_check_troubleshooting_and_uninstall_work_as_written(tailnet, release, tmp_path):
    shell = ReadmeShell(release.namespace, tmp_path, tailnet.lan, tailnet.workload)

    # --- Install, step 3: relay-values.yaml and three commands ------------------------------------------------------
    install = section(README.read_text(), "3. Install")
    readme_values = yaml.safe_load(blocks(install, "yaml")[0].text)
    assert readme_values == ci_values("seed"), "the README's relay-values.yaml is the seed variant (test_docs.py)"
    # on this cluster: its images, control server and DERP setting, the routed pool's addresses, no tags (Headscale
    # takes them from the key); the credential stays the README's Secret, which holds the cluster's key
    values = deep_merge(cluster_values(), on_cluster("seed"))
    values["auth"] = readme_values["auth"]
    (tmp_path / "relay-values.yaml").write_text(yaml.safe_dump(values))
    [create_namespace, *rest] = commands(blocks(install, "sh")[0])
    # the namespace is the fixture's, labelled with this test session so that a killed run's leftovers are found
    assert create_namespace == "kubectl create namespace tailscale"
    for command in rest:
        shell.run(command)

    pod = release.pod(0)
    port = readme_values["relay"]["port"]
    expected = release.service_endpoints(0, port)
    assert {"v6" if e.startswith("[") else "v4" for e in expected} == {"v4", "v6"}, (
        f"the README's RequireDualStack Service should have an IPv4 and an IPv6 address: {expected}"
    )
    assert release.relay_settings(pod) == (str(port), expected), "the relay advertises the Service's addresses"
    assert port in release.udp_ports_bound(pod), "the relay's UDP port is not bound inside the pod"

    # --- Check it: helm test, the status, then a ping from the LAN device -------------------------------------------
    [in_cluster, from_lan] = readme_section_commands("Check it")
    helm_test, get_status = in_cluster
    shell.run(helm_test)
    status = json.loads(shell.run(get_status))
    # the test tailnet's grant (tailscale.com/cap/relay from every node to tag:relay) covers the LAN device and the
    # workload at least, and the relay hears its home DERP region
    assert status["ready"] and status["relayPeers"] >= 2 and not status.get("unusable"), status
    assert "RelayUsable" in [reason for reason, _ in release.agent_events(pod)]
    [ping] = from_lan
    pongs = parse_pongs(shell.run(ping, timeout=300))
    relay_endpoints = {p.relay_endpoint for p in pongs if p.path == "peer-relay"}
    assert relay_endpoints, f"the README's ping never came via peer-relay(…); it saw: {[p.via for p in pongs]}"
    assert relay_endpoints <= expected, relay_endpoints

    # --- Troubleshooting: my device never uses the relay ------------------------------------------------------------
    [on_device, on_relay] = readme_section_commands("My device never uses the relay")
    relay_ip = shell.run(on_device[0]).strip()
    assert relay_ip in json.loads(shell.run(on_device[1])), "the LAN device may use the relay: peer-relay-servers"
    assert "peer-relay" in shell.run(on_device[2]), "tailscale status names the relayed path"
    assert "RelayUsable" in shell.run(on_relay[0])
    shell.run(on_relay[1])  # the relay's sessions: the LAN device's may have ended, so only that it answers

    # --- Uninstalling: what stays, and the commands that remove it --------------------------------------------------
    [uninstall], [forget_nodes], [remove_hook_objects], [remove_key] = readme_section_commands("Uninstalling")
    shell.run(uninstall)
    selector = f"app.kubernetes.io/instance={release.name}"
    assert labelled(release, selector) == sorted(
        [f"Secret/{release.names.state_secret(0)}", f"Pod/{release.names.test_pod}"]
    ), "helm uninstall should leave only what the README lists: the state Secret and the helm test Pod"
    assert release.core.read_namespaced_secret(release.names.state_secret(0), release.namespace).data, (
        "the kept state Secret holds the node's identity"
    )
    for command in (forget_nodes, remove_hook_objects, remove_key):
        shell.run(command)
    assert labelled(release, selector) == [], "the README's removal commands should leave nothing of the release"
    assert "tailscale-auth" not in [
        s.metadata.name for s in release.core.list_namespaced_secret(release.namespace).items
    ]
